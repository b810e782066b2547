"""Offline pipeline: datasets, BadNets poisoning, target models, de-trigger autoencoders,
detection, evaluation and ONNX export for the detrigger-guard model sets.

Floors, from the ground up; every import points down or stays on its floor
(tests/test_floors.py):
- data/: datasets, triggers, the random trigger sampler, augmentation, the attack suite;
- nets/: target classifiers, de-trigger AEs, checkpoints, ONNX export and ONNX-to-torch;
- config.py (TargetConfig, AEConfig, the presets) and evidence.py (hardware, versions, commit);
- evaluation/: metrics, detection rules, detectors, STRIP calibration, the detection comparison,
  model-set writing, and the one Markdown renderer of the reports (cli.py sits here too);
- audit/: the model audit's building blocks (synthesis, anomaly, identification, pruning,
  unlearning, restarts, the audit's report rendering);
- fit/: the training loops of the target and of the AE;
- the jobs, each run with `python -m training.<job>` and importing no other job: train_target,
  train_detrigger, reproduce, swap_detrigger, calibration_report, fusion_report, suite,
  detection_report, detection_tables, and audit (`__main__`), audit.tune, audit.joint,
  audit.control, audit.report, audit.families; fit_set, calibrate_set and recalibrate have no
  options of their own: `detrigger-guard fit` and `calibrate` (cli/) call them.
"""
