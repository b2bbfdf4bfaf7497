"""The README's Python examples run as written (they default to the world shipped with the package)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no ```python example"
    for i, code in enumerate(blocks):
        scope: dict = {}
        exec(compile(code, f"README.md python block {i + 1}", "exec"), scope)  # noqa: S102
        if "env" in scope:  # the Gymnasium example: a real step of the shipped world
            obs = scope["obs"]
            assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
            assert scope["env"].action_space.n == 8 and scope["envs"].num_envs == 4
