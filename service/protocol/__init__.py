"""The Open Inference Protocol (KServe V2): its tensor type, REST codec and the data plane."""
