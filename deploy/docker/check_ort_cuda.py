"""Fail the GPU image build when onnxruntime-gpu was built for another CUDA major version
than the base image carries: the CUDA provider would not load, and the guard would quietly
run on the CPU. nvidia/cuda images set CUDA_VERSION; other bases skip the check.

    /opt/venv/bin/python check_ort_cuda.py
"""

import os
import sys

from onnxruntime.capi import build_and_package_info as info


def main() -> int:
    base = os.environ.get("CUDA_VERSION", "")
    built_for = getattr(info, "cuda_version", "") or ""
    if not base:
        print("CUDA_VERSION is not set (not an nvidia/cuda base): check skipped")
        return 0
    if base.split(".")[0] != built_for.split(".")[0]:
        print(
            f"onnxruntime-gpu {info.__version__} is built for CUDA {built_for or '?'}, the base "
            f"image has CUDA {base}: choose a matching CUDA_BASE_IMAGE or pin onnxruntime-gpu",
            file=sys.stderr,
        )
        return 1
    print(f"onnxruntime-gpu {info.__version__}: CUDA {built_for}, base image CUDA {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
