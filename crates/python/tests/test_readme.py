"""Every Python program of the README (each block that imports resilient_cache)
runs, against a test server instead of localhost:6379."""

from __future__ import annotations

import re

import pytest

import resilient_cache
from conftest import REPO

BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    if "import" in block and "resilient_cache" in block
]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(block, redis, monkeypatch):
    real = resilient_cache.CacheFactoryConfig

    def pointed_at_the_test_server(**kwargs):
        return real(**{**kwargs, "l2_host": "127.0.0.1", "l2_port": redis.port})

    monkeypatch.setattr(resilient_cache, "CacheFactoryConfig", pointed_at_the_test_server)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    # The blocks wrote through to the test server's L2.
    assert redis.command("DBSIZE") != b":0\r\n"
