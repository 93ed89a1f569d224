"""Whether llama.cpp may use its AMX weight buffers on this machine.

Some cloud CPUs advertise AMX (`amx_tile` in /proc/cpuinfo) but fault on its instructions inside the VM: a
llama.cpp build with AMX kernels then dies with SIGSEGV on the first decode. Loading the model with
`use_extra_bufts = False` avoids those buffers (and llama.cpp's other weight repacking), at some speed; other
kernels then compute the matrix products, so results differ in the last bits from a load with them.

Where the CPU does not advertise AMX nothing changes and nothing is probed. Where it does, a one-off probe
in a subprocess loads the embedded GGUF with default parameters and decodes a few tokens; its death by a
signal means AMX is faulty here. The verdict is cached in `<cache_root>/amx.json`, keyed by the machine
and the llama-cpp-python build. The model argument `amx=on|off` skips the probe and forces either way.
`$INFERENCEKIT_AMX_PROBE` replaces the probe command (diagnosis and tests): it runs, with the GGUF path as
its last argument, even on a CPU without AMX, and its verdicts are cached apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal

from inferencekit.cache import cache_root
from inferencekit.files import write_atomic

AmxMode = Literal["auto", "on", "off"]
PROBE_ENV = "INFERENCEKIT_AMX_PROBE"
PROBE_TIMEOUT = 300.0  # seconds; loading and decoding a 135M model takes a few

log = logging.getLogger("inferencekit")
_decided: dict[tuple[str, str], AmxDecision] = {}  # per process: probe and log once


@dataclass(frozen=True)
class AmxDecision:
    """`extra_bufts`: the model parameter `use_extra_bufts` to load with; `reason`: why, in words."""

    mode: str
    extra_bufts: bool
    reason: str

    def settings(self) -> dict[str, object]:
        """What the run's provenance records."""
        return {"amx": self.mode, "use_extra_bufts": self.extra_bufts, "amx_reason": self.reason}


def cpu_advertises_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU flags list `amx_tile` (Linux; elsewhere False)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_tile" in line.split() for line in text.splitlines())


def decide(mode: str = "auto", gguf: str | Path | None = None) -> AmxDecision:
    """How to load llama.cpp models here: `mode` "on"/"off" forces, "auto" checks (see the module docstring).

    `gguf` is the model the probe loads when the embedded one is missing.
    """
    if mode == "on":
        return AmxDecision(mode, True, "forced on (amx=on)")
    if mode == "off":
        return AmxDecision(mode, False, "forced off (amx=off)")
    if mode != "auto":
        raise ValueError(f"amx must be auto, on or off, got {mode!r}")
    override = os.environ.get(PROBE_ENV) or ""
    if not override and not cpu_advertises_amx():
        return AmxDecision(mode, True, "the CPU does not advertise AMX")
    key = f"{_machine()}|{_build()}" + (f"|probe={override}" if override else "")
    memo = (str(cache_root()), key)
    if memo not in _decided:
        usable, detail = _verdict(key, override, gguf)
        if usable:
            decision = AmxDecision(mode, True, f"AMX probe passed ({detail})")
        else:
            decision = AmxDecision(mode, False, f"AMX probe failed ({detail})")
            log.warning("llama.cpp's AMX kernels fail on this machine (%s): loading models without its extra "
                        "buffer types (slower; --model-arg amx=on forces them)", detail)
        _decided[memo] = decision
    return _decided[memo]


def _machine() -> str:
    """This machine as the cache knows it: host name, CPU model, kernel."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()}|{cpu}|{platform.release()}"


def _build() -> str:
    """The llama-cpp-python build: its version and its native libraries' sizes and times."""
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        version = "?"
    import llama_cpp

    libs = sorted(Path(llama_cpp.__file__).parent.rglob("*.so*")) + sorted(
        Path(llama_cpp.__file__).parent.rglob("*.dylib"))
    stamp = "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in libs)
    return f"llama-cpp-python {version} {hashlib.sha256(stamp.encode()).hexdigest()[:16]}"


def _cache_file() -> Path:
    return cache_root() / "amx.json"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _verdict(key: str, override: str, gguf: str | Path | None) -> tuple[bool, str]:
    """(usable, detail) from the cache, else from a probe (cached when it says something about AMX)."""
    entry = _read_cache().get(key)
    if isinstance(entry, dict) and "usable" in entry:
        return bool(entry["usable"]), f"{entry.get('detail', '')}, cached"
    usable, detail, conclusive = probe(override, gguf)
    if conclusive:
        cache = _read_cache()
        cache[key] = {"usable": usable, "detail": detail, "probed": datetime.now(timezone.utc).isoformat()}
        try:
            _cache_file().parent.mkdir(parents=True, exist_ok=True)
            write_atomic(_cache_file(), json.dumps(cache, indent=1, sort_keys=True))
        except OSError:  # a read-only cache: probe again next time
            pass
    return usable, detail


def probe(command: str = "", gguf: str | Path | None = None) -> tuple[bool, str, bool]:
    """Run the probe once: (usable, detail, conclusive). Death by a signal is conclusive (faulty AMX), as is
    success; any other failure (the probe could not load the model, a timeout) falls back to no AMX buffers
    without caching that verdict."""
    path = _probe_model(gguf)
    argv = [*shlex.split(command)] if command else [sys.executable, "-m", "inferencekit.models.llamacpp.amx_probe"]
    argv.append(path)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"the probe did not finish in {PROBE_TIMEOUT:.0f} s", False
    except OSError as exc:
        return False, f"the probe could not start: {exc}", False
    code = done.returncode
    if code == 0:
        return True, "a decode with AMX buffers ran", True
    if code < 0 or code > 128:  # killed by a signal (a shell reports 128 + the signal)
        number = -code if code < 0 else code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return False, f"a decode with AMX buffers was killed by {name}", True
    last = (done.stderr.strip().splitlines() or [""])[-1][:200]
    return False, f"the probe exited with {code}: {last}", False


def _probe_model(gguf: str | Path | None) -> str:
    """The embedded GGUF (its Q4_1 weights take the AMX buffers), else the model being loaded."""
    from inferencekit.models.embedded import embedded_gguf_path

    try:
        return str(embedded_gguf_path())
    except FileNotFoundError:
        return str(gguf or "")
