"""A Ctrl-C or SIGTERM whose exception a finalizer swallowed still stops the pass, before its next batch."""

import operator
import signal
import sys
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xai_jax import engine, interrupts, rowstore, train
from xai_jax.data.base import ArraySource
from xai_jax.data.batcher import Batches
from xai_jax.errors import Terminated

SIGNALS = [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
BATCHES, SIGNAL_AT = 12, 3


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler in every test, whatever this process inherited: a test run started in the
    background (`nohup ... &` in a script) begins with SIGINT ignored, and an ignored signal stays ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _swallow(signum: int) -> None:
    """Delivers ``signum`` to this process and drops the exception its handler raises, as CPython does with
    one raised in a finalizer or a weakref callback ("Exception ignored in ...")."""
    try:
        signal.raise_signal(signum)
    except BaseException:  # noqa: BLE001 - the swallowing under test
        pass


class _SignallingSource(ArraySource):
    """Counts reads of batches, and swallows ``signum`` while reading batch ``SIGNAL_AT``."""

    def __init__(self, signum: int):
        super().__init__(np.zeros((8 * BATCHES, 2, 2), np.uint8), np.zeros(8 * BATCHES, np.int64))
        self.signum, self.reads = signum, 0

    def read(self, indices):
        self.reads += 1
        if self.reads == SIGNAL_AT:
            _swallow(self.signum)
        return super().read(indices)


def _count(state, batch, params):
    return state + jnp.sum(batch["mask"])


def _fold(source):
    return engine.run(_count, jnp.zeros((), jnp.int32), Batches(source, 8, prefetch=0), progress=False)


def _collect(source):
    return engine.collect_rows(lambda batch, params: batch["labels"], Batches(source, 8, prefetch=0),
                               progress=False)


@pytest.mark.parametrize("signum, exception", SIGNALS)
@pytest.mark.parametrize("run_pass", [_fold, _collect], ids=["run", "collect_rows"])
def test_a_swallowed_signal_stops_the_pass_before_the_next_batch(signum, exception, run_pass):
    source = _SignallingSource(signum)
    with interrupts.handled(), pytest.raises(exception):
        run_pass(source)
    assert source.reads == SIGNAL_AT  # the batch it came in was the last one read


class _SignallingRows(rowstore.DiskRows):
    """Rows on disk that swallow ``signum`` while their chunk ``SIGNAL_AT`` is read."""

    def __getitem__(self, key):
        self.reads += 1
        if self.reads == SIGNAL_AT:
            _swallow(self.signum)
        return super().__getitem__(key)


@pytest.mark.parametrize("signum, exception", SIGNALS)
def test_a_swallowed_signal_stops_a_pass_over_arrays_before_the_next_chunk(signum, exception, tmp_path):
    rows = _SignallingRows(tmp_path / "rows.npy", (8 * BATCHES, 3), np.float32)
    rows.signum, rows.reads = signum, 0
    with interrupts.handled(), pytest.raises(exception):
        engine.map_arrays(lambda x, params: 2 * x, rows, chunk=8)
    assert rows.reads == SIGNAL_AT


@pytest.mark.parametrize("signum, exception", SIGNALS)
def test_a_swallowed_signal_stops_training_before_the_next_step(signum, exception):
    steps = []

    def loss_fn(params, model_state, batch, key):
        return jnp.sum(params * batch["x"]), (model_state, {})

    def evaluate(state):  # after the first epoch, the signal comes and is swallowed
        steps.append(int(state.step))
        _swallow(signum)
        return {}

    optimizer = optax.sgd(0.1)
    state = train.init_state(jnp.ones(3), optimizer)
    with interrupts.handled(), pytest.raises(exception):
        train.fit(loss_fn, optimizer, state, {"x": np.ones((32, 3), np.float32)}, batch_size=8, epochs=3,
                  key=jax.random.key(0), evaluate=evaluate, progress=False)
    assert steps == [4]  # evaluated once: not one step of the second epoch ran


@pytest.mark.parametrize("signum, exception", SIGNALS)
def test_a_signal_in_a_finalizer_is_raised_again_without_cpythons_report(signum, exception, capsys):
    reports = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = reports.append  # what would otherwise print "Exception ignored in ..."
    try:
        with interrupts.handled():
            owner = type("Owner", (), {})()
            weakref.finalize(owner, signal.raise_signal, signum)
            del owner  # the finalizer runs here, and CPython swallows its exception
            with pytest.raises(exception):
                interrupts.raise_if_received()
        assert reports == []
        owner = type("Owner", (), {})()
        weakref.finalize(owner, operator.truediv, 1, 0)
        del owner  # any other exception of a finalizer is still reported
        assert [report.exc_type for report in reports] == [ZeroDivisionError]
    finally:
        sys.unraisablehook = previous_hook
    assert capsys.readouterr().err == ""


def test_outside_handled_a_swallowed_signal_is_not_raised_again_and_the_handlers_come_back():
    before = {signum: signal.getsignal(signum) for signum, _ in SIGNALS}, sys.unraisablehook
    with interrupts.handled():
        _swallow(signal.SIGTERM)
        with pytest.raises(Terminated):
            interrupts.raise_if_received()
    assert ({signum: signal.getsignal(signum) for signum, _ in SIGNALS}, sys.unraisablehook) == before
    interrupts.raise_if_received()  # the record went with the handlers
    source = _SignallingSource(signal.SIGINT)
    assert int(_fold(source)) == 8 * BATCHES  # Python's own handler: swallowed, the pass runs to its end
    assert source.reads == BATCHES


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            interrupts.raise_if_received()
    finally:
        signal.signal(signal.SIGINT, previous)
