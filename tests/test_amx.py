"""llama.cpp's AMX buffers: the probe, its cached verdict, the fallback without extra buffer types, the model
argument that forces either way, and the provenance record. The probe is pointed at commands that die by a
real signal ($INFERENCEKIT_AMX_PROBE), so the fallback runs on any machine; the real crash only where the CPU
advertises AMX."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from inferencekit.errors import UserError
from inferencekit.models import load_generator, resolve_model
from inferencekit.models.base import SamplingParams
from inferencekit.models.llamacpp import amx

SEGFAULT = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


def probe_command(code: str, marker: Path) -> str:
    """A probe that appends a line to `marker` each time it runs, then runs `code`."""
    return shlex.join([sys.executable, "-c", f"open({str(marker)!r}, 'a').write('ran\\n'); {code}"])


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCEKIT_CACHE_DIR", str(tmp_path / "cache"))


def decide_in_a_new_process(mode: str = "auto") -> dict:
    code = ("import json; from inferencekit.models.llamacpp.amx import decide; "
            f"print(json.dumps(decide({mode!r}).settings()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_probe_killed_by_sigsegv_loads_without_extra_buffers(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "probe-runs"
    monkeypatch.setenv(amx.PROBE_ENV, probe_command(SEGFAULT, marker))
    with caplog.at_level(logging.WARNING, logger="inferencekit"):
        gen = load_generator(resolve_model("smollm2-135m", model_args={"n_ctx": 256}))
    try:
        assert runs(marker) == 1
        assert gen.amx.extra_bufts is False and "SIGSEGV" in gen.amx.reason
        settings = gen.engine_settings()
        assert settings["amx"] == "auto" and settings["use_extra_bufts"] is False
        (line,) = [r.getMessage() for r in caplog.records if "AMX" in r.getMessage()]
        assert "amx=on" in line and "\n" not in line
        # the model loaded without extra buffer types runs: greedy text, the same twice
        prompt = gen.chat_prompt([{"role": "user", "content": "What is 2 + 3?"}])
        first = gen.generate([prompt], SamplingParams(max_new_tokens=12))[0][0]
        assert first.text and gen.generate([prompt], SamplingParams(max_new_tokens=12))[0][0].text == first.text
    finally:
        gen.close()
    cache = json.loads((tmp_path / "cache" / "amx.json").read_text())
    (entry,) = cache.values()
    assert entry["usable"] is False and "SIGSEGV" in entry["detail"]


def test_the_verdict_is_cached_per_machine_and_build(tmp_path, monkeypatch):
    marker = tmp_path / "probe-runs"
    monkeypatch.setenv(amx.PROBE_ENV, probe_command(SEGFAULT, marker))
    first = decide_in_a_new_process()
    second = decide_in_a_new_process()  # another process: read from the cache, no probe
    assert runs(marker) == 1
    assert first["use_extra_bufts"] is second["use_extra_bufts"] is False and "cached" in second["amx_reason"]
    (key,) = json.loads((tmp_path / "cache" / "amx.json").read_text())
    assert "llama-cpp-python" in key and os.uname().nodename in key
    # a probe that passes is cached too, under its own key
    monkeypatch.setenv(amx.PROBE_ENV, probe_command("pass", marker))
    assert decide_in_a_new_process()["use_extra_bufts"] is True
    assert decide_in_a_new_process()["use_extra_bufts"] is True and runs(marker) == 2


def test_an_inconclusive_probe_falls_back_without_caching(tmp_path, monkeypatch):
    marker = tmp_path / "probe-runs"
    monkeypatch.setenv(amx.PROBE_ENV, probe_command("import sys; sys.exit('no model here')", marker))
    for _ in range(2):
        got = decide_in_a_new_process()
        assert got["use_extra_bufts"] is False and "exited with 1: no model here" in got["amx_reason"]
    assert runs(marker) == 2 and not (tmp_path / "cache" / "amx.json").exists()


def test_the_model_argument_forces_either_way_without_a_probe(tmp_path, monkeypatch):
    marker = tmp_path / "probe-runs"
    monkeypatch.setenv(amx.PROBE_ENV, probe_command(SEGFAULT, marker))
    assert decide_in_a_new_process("on")["use_extra_bufts"] is True
    assert decide_in_a_new_process("off")["use_extra_bufts"] is False
    assert runs(marker) == 0
    assert resolve_model("smollm2-135m", model_args={"amx": "off"}).amx == "off"
    with pytest.raises(UserError, match="amx") as err:
        resolve_model("smollm2-135m", model_args={"amx": "sometimes"})
    assert "\n" not in str(err.value)


@pytest.mark.skipif(amx.cpu_advertises_amx(), reason="the CPU advertises AMX: the probe decides")
def test_nothing_changes_where_the_cpu_has_no_amx(monkeypatch):
    monkeypatch.delenv(amx.PROBE_ENV, raising=False)
    got = amx.decide("auto")
    assert got.extra_bufts is True and got.reason == "the CPU does not advertise AMX"
    assert not (Path(os.environ["INFERENCEKIT_CACHE_DIR"]) / "amx.json").exists()  # no probe ran


def test_the_real_probe_loads_and_decodes():
    usable, detail, conclusive = amx.probe()
    if amx.cpu_advertises_amx():  # either verdict is real there; it must be a conclusive one
        assert conclusive, detail
    else:
        assert (usable, conclusive) == (True, True), detail


def test_provenance_records_which_was_used(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "inferencekit.cli", "run", "--model-arg", "amx=off", "--limit", "1",
         "--max-new-tokens", "8", "--no-progress", "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "w").glob("*/*+*+*")
    engine = json.loads((run / "provenance.json").read_text())["invocations"][-1]["engine"]
    assert (engine["amx"], engine["use_extra_bufts"], engine["amx_reason"]) == ("off", False, "forced off (amx=off)")


@pytest.mark.skipif(not amx.cpu_advertises_amx(), reason="the CPU does not advertise AMX")
def test_the_real_crash_where_the_cpu_advertises_amx(embedded_gguf, monkeypatch):
    """Plain llama-cpp-python with default parameters either dies by a signal here (faulty AMX) or not: the
    probe's verdict must agree, and the generator must work either way."""
    monkeypatch.delenv(amx.PROBE_ENV, raising=False)
    code = (f"import llama_cpp; llm = llama_cpp.Llama(model_path={str(embedded_gguf)!r}, n_ctx=128, verbose=False); "
            "print(llm.create_completion('Natalia sold clips to 48 of her friends', max_tokens=4))")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    crashed = plain.returncode < 0
    assert amx.decide("auto").extra_bufts is not crashed
    gen = load_generator(resolve_model("smollm2-135m", model_args={"n_ctx": 256}))
    try:
        assert gen.generate(["1 + 1 ="], SamplingParams(max_new_tokens=4))[0][0].tokens > 0
    finally:
        gen.close()


def test_the_tests_own_llama_cpp_calls_follow_the_verdict(tmp_path, monkeypatch):
    """amx_safe.py: where the probe dies, `llama_cpp.Llama`'s default model parameters leave extra buffers off."""
    monkeypatch.setenv(amx.PROBE_ENV, probe_command(SEGFAULT, tmp_path / "probe-runs"))
    code = ("import amx_safe, llama_cpp, llama_cpp.llama_cpp as raw; print(amx_safe.apply(), "
            "raw.llama_model_default_params().use_extra_bufts, llama_cpp.llama_model_default_params().use_extra_bufts)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent, env=os.environ)
    assert out.stdout.split() == ["True", "False", "True"], out.stderr  # inferencekit's own loader is untouched
