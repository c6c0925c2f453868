"""Two processes converting the same pretrained weights into vitfer's cache at the same moment
both succeed and leave one valid file (no temporary left behind). The hub is a local, offline
Hugging Face cache (as in ``tests/weights``); nothing touches the network."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from reliability_helpers import record, subprocess_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "weights"))
from weights_helpers import fast_random_timm, make_hub_cache  # noqa: E402

from vitfer.weights.hub import converted_cache_path  # noqa: E402
from vitfer.weights.io import read_checkpoint  # noqa: E402

NAME = "vit_tiny_patch16_224"
REPO_ID = "acme/vit-tiny-race"

_CHILD = textwrap.dedent("""
    import hashlib, sys, time
    from pathlib import Path
    go = Path(sys.argv[1])
    from vitfer.weights.hub import fetch_state_dict
    while not go.exists():  # start converting together
        time.sleep(0.005)
    sd = fetch_state_dict({name!r}, "hf-hub:{repo}").state_dict
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode()); h.update(sd[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    print(h.hexdigest())
""").replace("import hashlib, sys, time", "import hashlib, sys, time\nimport torch")


def _digest(sd: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_two_processes_convert_the_same_weights_at_once(tmp_path, monkeypatch):
    sd = {k: v.detach().clone() for k, v in fast_random_timm(NAME, seed=5).state_dict().items()}
    want = _digest(sd)
    script = _CHILD.format(name=NAME, repo=REPO_ID)
    for round_ in range(2):
        root = tmp_path / f"round{round_}"
        env = subprocess_env()
        env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root / "hub"), VITFER_HOME=str(root / "vitfer"))
        env.pop("HF_HOME", None)
        make_hub_cache(root / "hub", REPO_ID, sd)
        go = root / "go"
        procs = [subprocess.Popen([sys.executable, "-c", script, str(go)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
        time.sleep(0.5)
        go.touch()
        results = [p.communicate(timeout=300) for p in procs]
        ok = all(p.returncode == 0 and out.strip() == want for p, (out, _) in zip(procs, results))
        record("handled" if ok else "crash", f"two concurrent conversions (round {round_})",
               " | ".join(err[-500:] for _, err in results))
        assert ok, [(p.returncode, err[-2000:]) for p, (_, err) in zip(procs, results)]
        monkeypatch.setenv("VITFER_HOME", str(root / "vitfer"))
        cache = converted_cache_path(REPO_ID, "main")
        files = sorted(p.name for p in cache.parent.iterdir())
        valid = files == [cache.name] and _digest(read_checkpoint(cache)[0]) == want
        record("handled" if valid else "damaged", f"converted cache after concurrent conversions (round {round_})",
               str(files))
        assert valid, files
