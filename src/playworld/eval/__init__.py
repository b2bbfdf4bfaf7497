"""`playworld eval`: honest figures about a trained world, with 95% bootstrap intervals (docs/eval.md).

Modules: ``stats`` (intervals, PSNR, SSIM), ``clips`` (which held-out clips), ``rollouts`` (tokenizer
and rollout figures per clip), ``actions`` (latent vs true actions), ``motion`` (phase correlation,
consistency), ``control`` (driving the world: consistency, memory, grid, speed), ``envwalk`` (the
real-environment walk), ``evaluate`` (all of it -> metrics), ``schema`` (metrics.json), ``report``
(report.html), ``compare`` (tables across runs).
"""
