"""The peer benchmark's own logic (loadtests/bench/peers.py): pins, venv reuse, answer checks,
answered-only throughput and the per-round ratios. Nothing here installs or starts a server."""

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "loadtests" / "bench"
sys.path.insert(0, str(BENCH))  # the benchmark scripts import each other as top-level modules
try:
    import peers
    import run as bench
finally:
    sys.path.remove(str(BENCH))


def sample(rps: float, p50: float = 1.0, errors: int = 0) -> bench.Sample:
    return bench.Sample(rps, p50, p50 * 2, 100.0, errors)


def venv(name: str) -> peers.Venv:
    return peers.Venv(name, Path("/nowhere/bin/python"), {}, 1.0, 0, True)


def test_requirements_pin_every_package_and_the_same_runtime() -> None:
    """Each peer's file pins everything with ==, its server included, and both peers run the
    same onnxruntime and numpy."""
    pins = {peer.name: peers.read_pins(peer.requirements) for peer in peers.PEERS}
    for peer in peers.PEERS:
        assert peer.package in pins[peer.name]
    runtimes = {(p["onnxruntime"], p["numpy"]) for p in pins.values()}
    assert len(runtimes) == 1


def test_an_unpinned_requirement_is_refused(tmp_path: Path) -> None:
    """A requirement without == stops the run with the file and the line."""
    requirements = tmp_path / "r.txt"
    requirements.write_text("# comment\nkserve==0.21.0\nnumpy>=2\n")
    with pytest.raises(SystemExit, match="numpy>=2"):
        peers.read_pins(requirements)


def test_names_are_normalized(tmp_path: Path) -> None:
    """Pins are found by their normalized name, whatever the spelling in the file."""
    requirements = tmp_path / "r.txt"
    requirements.write_text("Prometheus_Client==0.26.0  # metrics\n")
    assert peers.read_pins(requirements) == {"prometheus-client": "0.26.0"}


def fake_venv(cache: Path, peer: peers.Peer, fingerprint: str) -> None:
    path = cache / peer.name.lower()
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").write_text("")
    (path / "bench-peer.json").write_text(
        json.dumps({"fingerprint": fingerprint, "install_s": 42.0})
    )


def test_a_venv_made_from_the_same_file_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv whose marker matches the requirements file is used as it is."""
    peer = peers.PEERS[0]
    fake_venv(tmp_path, peer, peers.fingerprint(peer.requirements))
    monkeypatch.setattr(peers, "make_venv", lambda *args: pytest.fail("made anew"))
    venv = peers.prepare_venv(peer, tmp_path, log=lambda text: None)
    assert venv.reused and venv.install_s == 42.0
    assert venv.pins[peer.package] == peers.read_pins(peer.requirements)[peer.package]


def test_a_venv_from_another_file_is_made_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed requirements file (another fingerprint) makes the venv again."""
    peer = peers.PEERS[1]
    fake_venv(tmp_path, peer, "an older file")
    made: list[Path] = []

    def make(path: Path, requirements: Path, log: peers.Log) -> dict[str, float | str]:
        made.append(path)
        return {"install_s": 7.0}

    monkeypatch.setattr(peers, "make_venv", make)
    venv = peers.prepare_venv(peer, tmp_path, log=lambda text: None)
    assert made == [tmp_path / "mlserver"] and not venv.reused and venv.install_s == 7.0
    marker = json.loads((tmp_path / "mlserver" / "bench-peer.json").read_text())
    assert marker["fingerprint"] == peers.fingerprint(peer.requirements)


def test_the_benchmark_body_fits_the_model() -> None:
    """body.json names the model's input with its width."""
    peers.check_body_fits_model()


@pytest.mark.parametrize(
    ("got", "reason"),
    [
        (np.array([[0.1, 0.7, 0.2]], dtype=np.float32), None),
        (np.array([[0.1, 0.7000001, 0.2]], dtype=np.float32), None),
        (np.array([[0.1, 0.2, 0.7]], dtype=np.float32), "scores"),
        (np.array([[0.1, 0.71, 0.2]], dtype=np.float32), "scores"),
        (np.array([0.1, 0.7, 0.2], dtype=np.float32), "shape"),
    ],
)
def test_a_peer_must_answer_the_gateways_prediction(got: np.ndarray, reason: str | None) -> None:
    """Same shape, same top class and scores within 1e-5, or the reason it differs."""
    expected = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    found = peers.differs(expected, got)
    assert found is None if reason is None else reason in str(found)


def test_a_peer_that_answers_an_error_is_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's non-200 answer to the check is the reason it is left out; the gateway's answer
    is the reference."""
    results = peers.PeerResults(1, 1, [1], [venv("KServe")])

    def answer(url: str) -> np.ndarray:
        if "peer" in url:
            raise ValueError("answered 400: received byte inputs")
        return np.ones((1, 10), dtype=np.float32)

    monkeypatch.setattr(peers, "prediction", answer)
    assert peers.check_answer(results, peers.GATEWAY, "http://gateway") is None
    assert results.reference is not None
    assert peers.check_answer(results, "KServe", "http://peer") == (
        "answered 400: received byte inputs"
    )


@contextlib.contextmanager
def down() -> Iterator[tuple[str, int]]:
    raise peers.PeerDown("server exited with 1; its log ends:\nImportError: kserve")
    yield "http://never", 0


def test_a_peer_that_does_not_start_is_left_out(tmp_path: Path) -> None:
    """A peer that exits at start is recorded with its log and not offered in later rounds;
    the run goes on."""
    results = peers.PeerResults(2, 1, [1], [venv("KServe"), venv("MLServer")])
    peers.measure_server(results, 1, "KServe", down, log=lambda text: None)
    assert "round 1 on: it did not start" in results.failures["KServe"]
    assert "ImportError: kserve" in results.failures["KServe"]
    names = [name for name, _ in peers.servers(results, tmp_path)]
    assert names == [peers.FLOOR, peers.GATEWAY, "MLServer"]


def test_error_answers_add_no_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests/s and CPU per request count only answered requests, not error answers."""
    monkeypatch.setattr(bench, "wrk", lambda *args: (1000, 400, 2.0, 0.5, 3.0))
    cpu = iter([10.0, 10.6])
    monkeypatch.setattr(bench, "cpu_seconds", lambda pid: next(cpu))
    measured = peers.measure_answered("http://x", 1, 32, 2)
    assert measured.rps == 300 and measured.errors == 400
    assert measured.cpu_us == pytest.approx(1000)


def test_ratios_pair_rounds_and_take_the_median() -> None:
    """The gateway ÷ a peer is taken round by round, then the median; rounds a peer missed
    are left out."""
    results = peers.PeerResults(3, 1, [32], [venv("KServe")])
    for round_number, (gateway, kserve) in enumerate([(5000, 1000), (6000, 1000), (4000, 2000)]):
        results.add(peers.GATEWAY, 32, round_number, sample(gateway))
        results.add("KServe", 32, round_number, sample(kserve))
    results.add(peers.GATEWAY, 32, 3, sample(9000))
    assert peers.median_ratio(results, peers.GATEWAY, "KServe", 32, "rps") == 5.0
    assert peers.median_ratio(results, "KServe", peers.FLOOR, 32, "rps") is None


def test_tables_show_the_target_and_peers_left_out() -> None:
    """The tables give each server against the floor, the gateway against each peer with the
    target verdict, and name a peer that was not measured."""
    results = peers.PeerResults(1, 1, [1], [venv("KServe"), venv("MLServer")])
    results.add(peers.FLOOR, 1, 1, sample(4000))
    results.add(peers.GATEWAY, 1, 1, sample(3000))
    results.add("KServe", 1, 1, sample(500, errors=3))
    results.failures["MLServer"] = "not measured: its answer answered 500"
    text = peers.render_tables(results)
    assert "| KServe | 1 | 500 | 1.000 | 2.000 | 100 | 0.12 | 1.00 | 1.00 | 1.00 | 3 |" in text
    assert "| KServe | 1 | 6.00 | 1.00 | 1.00 | yes |" in text
    assert "MLServer: not measured" in text


def test_the_summary_gives_the_gateways_lead_and_the_verdict() -> None:
    """One line per measured peer, then whether the 5x target is met in every case."""
    results = peers.PeerResults(1, 1, [1, 32], [venv("KServe"), venv("MLServer")])
    for concurrency, gateway in [(1, 3000), (32, 6000)]:
        results.add(peers.GATEWAY, concurrency, 1, sample(gateway))
        results.add("KServe", concurrency, 1, sample(1000))
    text = peers.summary(results)
    assert "- the gateway's requests/s were 3.00x (c=1) and 6.00x (c=32) KServe's" in text
    assert "MLServer" not in text and "met in some but not every case" in text
    assert peers.summary(peers.PeerResults(1, 1, [1], [])) == "No peer was measured."
