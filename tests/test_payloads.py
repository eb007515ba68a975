"""What crosses the cut: the tensors the server side actually receives, method by method.

One round of every registered method runs on the serial executor with spies at the two
places where client data leaves the client:

* the client <-> server link (:class:`~sfp_ray.roles.server.ServerRole` ``forward`` /
  ``backward``, which :class:`~sfp_ray.roles.server.LocalBodyLink` calls): every tensor
  the server receives and every tensor it sends back;
* the client's upload (the state a client hands to the aggregation or, for vanilla split
  learning, to the next client through the server).

The tests check the payloads themselves against the client's raw training batches: the
server never receives the images or the labels, whole or as a slice; split methods send
only cut activations and their gradients of shape (batch, tokens, embed_dim); uploads are
exactly the method's trainable state; and ``messages.csv``'s ``shapes`` are the shapes of
the tensors that really crossed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny

import sfp_ray.roles.client as client_mod
from sfp_ray.config import load_config
from sfp_ray.costs import shape_str
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.methods import get_method, list_methods
from sfp_ray.orchestrator import Orchestrator
from sfp_ray.preparation import prepare_run
from sfp_ray.reports import ReportSink
from sfp_ray.tensors import as_tensor

TINY = tiny("model.depth=3", "data.samples_per_client=12", "train.batch_size=8", "pruning.keep_ratio=0.75")

EMBED_DIM = 192  # vit_tiny
TOKENS = 1 + 2 + (16 // 4) ** 2  # class token + prompts + patches


@dataclass
class Crossing:
    """One tensor crossing the link: which way, what kind, and the value."""

    client_id: int
    direction: str  # up: received by the server; down: sent by the server
    kind: str  # activation | gradient
    tensor: torch.Tensor


@dataclass
class Tap:
    """Everything captured during one run."""

    link: list[Crossing] = field(default_factory=list)
    uploads: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    batches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    data: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    out: Path | None = None


class SpyExecutor(SerialExecutor):
    """The serial executor with the server's entry points and the clients' uploads tapped."""

    def __init__(self, tap: Tap) -> None:
        super().__init__()
        self.tap = tap

    def start(self, spec):
        started = super().start(spec)
        if self.server is not None:
            self._tap_server()
        return started

    def _tap_server(self) -> None:
        server, tap = self.server, self.tap
        forward, backward = server.forward, server.backward

        def spy_forward(key, acts, *, need_grad, sent_at=None, cut=None):
            tap.link.append(Crossing(key[0], "up", "activation", as_tensor(acts).detach().clone()))
            reply = forward(key, acts, need_grad=need_grad, sent_at=sent_at, cut=cut)
            tap.link.append(Crossing(key[0], "down", "activation", as_tensor(reply.tensor).detach().clone()))
            return reply

        def spy_backward(key, grad_out, grad_slice=None, *, sent_at=None):
            tap.link.append(Crossing(key[0], "up", "gradient", as_tensor(grad_out).detach().clone()))
            reply = backward(key, grad_out, grad_slice, sent_at=sent_at)
            tap.link.append(Crossing(key[0], "down", "gradient", as_tensor(reply.tensor).detach().clone()))
            return reply

        server.forward, server.backward = spy_forward, spy_backward

    def run_clients(self, tasks, state, on_done=None):
        for t in tasks:
            data = self.spec.train.subset(t.indices)
            self.tap.data[t.client_id] = (data.images.clone(), data.labels.clone())

        def upload(o):  # before a streaming round folds the state away
            if o.state is not None:
                self.tap.uploads[o.client_id] = {k: as_tensor(v).detach().clone() for k, v in o.state.client.items()}
            if on_done is not None:
                on_done(o)

        outputs = super().run_clients(tasks, state, upload)
        self.tap.outputs.extend(outputs)
        return outputs


@pytest.fixture(scope="module")
def taps(tmp_path_factory) -> dict[str, tuple[Tap, object]]:
    """One round of every registered method, tapped; each writes its report (messages.csv) to ``tap.out``."""
    out = {}
    mp = pytest.MonkeyPatch()
    original = client_mod.split_step
    try:
        for name in list_methods():
            tap = Tap()

            def recording_split_step(split, x, y, link, ledger, opt, *, _tap=tap, **kw):
                _tap.batches.setdefault(ledger.client_id, []).append((x.clone(), y.clone()))
                return original(split, x, y, link, ledger, opt, **kw)

            mp.setattr(client_mod, "split_step", recording_split_step)
            spec = prepare_run(load_config(overrides=TINY), name)
            tap.out = tmp_path_factory.mktemp(name)
            sink = ReportSink(tap.out, plots=False)
            Orchestrator(spec, SpyExecutor(tap), [sink]).run()
            sink.finalize()
            out[name] = (tap, spec)
    finally:
        mp.undo()
    return out


# --------------------------------------------------------------------------- helpers


def contains_run(hay: torch.Tensor, needle: torch.Tensor) -> bool:
    """Whether the flattened ``needle`` occurs as a contiguous run of the flattened ``hay`` (exact values)."""
    hay = hay.detach().flatten().to(torch.float64)
    needle = needle.detach().flatten().to(torch.float64)
    n = needle.numel()
    if n == 0 or hay.numel() < n:
        return False
    for s in torch.nonzero(hay[: hay.numel() - n + 1] == needle[0]).flatten().tolist():
        if torch.equal(hay[s:s + n], needle):
            return True
    return False


def image_pieces(images: torch.Tensor) -> list[torch.Tensor]:
    """Every whole image and every image row that is not constant (a constant row could match by chance)."""
    pieces = [images]
    for img in images:
        pieces.append(img)
        for row in img.reshape(-1, img.shape[-1]):
            if row.unique().numel() > 1:
                pieces.append(row)
    return pieces


def received(tap: Tap) -> list[torch.Tensor]:
    """Every tensor that reached the server side: link uploads and uploaded states."""
    up = [c.tensor for c in tap.link if c.direction == "up"]
    return up + [t for state in tap.uploads.values() for t in state.values()]


def assert_no_raw_data(tensors: Sequence[torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> None:
    pieces = image_pieces(images)
    for t in tensors:
        assert t.is_floating_point(), f"an integer tensor {tuple(t.shape)} crossed (labels are integers)"
        assert not (t.shape == images.shape and torch.equal(t, images))
        assert not (t.shape == labels.shape and torch.equal(t.to(labels.dtype), labels))
        for piece in pieces:
            assert not contains_run(t, piece), f"a tensor {tuple(t.shape)} contains raw image values"
        if labels.numel() >= 4:
            assert not contains_run(t, labels), f"a tensor {tuple(t.shape)} contains the labels"


def is_split(name: str) -> bool:
    return get_method(name).server(load_config(overrides=TINY)) is not None


# --------------------------------------------------------------------------- tests


def test_the_spy_really_sees_raw_data():
    """The checker itself: it catches images and labels sent whole, as one sample, as one row, or concatenated."""
    images = torch.randn(4, 1, 16, 16)
    labels = torch.tensor([3, 1, 4, 1])
    leaks = [images.clone(), images[2].clone(), torch.cat([torch.randn(7), images[1, 0, 5], torch.randn(3)]),
             torch.cat([torch.randn(2, 16), images[0, 0, 3:4]]),
             torch.cat([torch.randn(5), labels.float()])]
    for leak in leaks:
        with pytest.raises(AssertionError):
            assert_no_raw_data([leak], images, labels)
    assert_no_raw_data([torch.randn(4, 19, 192)], images, labels)


@pytest.mark.parametrize("name", list_methods())
def test_the_server_never_receives_images_or_labels(taps, name):
    tap, _ = taps[name]
    assert tap.uploads, "no client uploaded"
    for cid, (images, labels) in tap.data.items():
        own = [c.tensor for c in tap.link if c.client_id == cid and c.direction == "up"]
        own += list(tap.uploads[cid].values())
        assert_no_raw_data(own, images, labels)
        for x, y in tap.batches.get(cid, []):  # the exact batches split training sent through the cut
            assert_no_raw_data(own, x, y)


@pytest.mark.parametrize("name", list_methods())
def test_split_methods_send_only_cut_activations_and_gradients(taps, name):
    tap, spec = taps[name]
    if not is_split(name):
        assert tap.link == [] and not tap.batches, f"{name} has no server body, yet the link was used"
        return
    assert tap.link, f"{name}: nothing crossed the cut"
    tokens = TOKENS if spec.cfg.prompt.num_tokens else TOKENS - 2
    # gradients come back down only when something before the cut trains (no prompts in SFPrompt: none)
    head_trains = spec.method.client_role(spec.workspace(("head", "body", "tail"), meta=True), spec.cfg).head_trains
    per_step = [("up", "activation"), ("down", "activation")]
    if head_trains:
        per_step += [("up", "gradient"), ("down", "gradient")]
    for cid, crossings in _by_client(tap.link).items():
        batch_sizes = [len(y) for _, y in tap.batches[cid]]
        assert [(c.direction, c.kind) for c in crossings] == per_step * len(batch_sizes)
        k = len(per_step)
        for i, b in enumerate(batch_sizes):
            step = [c.tensor for c in crossings[k * i:k * i + k]]
            assert all(t.dtype == torch.float32 for t in step)
            act_up, act_down = step[:2]
            assert act_up.shape == (b, tokens, EMBED_DIM)
            assert act_down.shape == (b, tokens, EMBED_DIM)  # the tail has a block: every token comes back
            if head_trains:
                grad_up, grad_down = step[2:]
                assert grad_up.shape == act_down.shape
                assert grad_down.ndim == 3 and grad_down.shape[0] == b and grad_down.shape[2] == EMBED_DIM
                assert grad_down.shape[1] <= tokens


@pytest.mark.parametrize("name", list_methods())
def test_uploads_are_exactly_the_trainable_state(taps, name):
    tap, spec = taps[name]
    method = get_method(name)
    ws = spec.workspace(("head", "body", "tail"), meta=True)
    names = method.client_names(ws)
    params = dict(ws.split.named_parameters())
    for cid, state in tap.uploads.items():
        assert sorted(state) == sorted(names), f"client {cid} uploaded other tensors than its trainable state"
        for k, v in state.items():
            assert tuple(v.shape) == tuple(params[k].shape), k
        if not is_split(name):
            continue
        assert not any(k.startswith("body.") for k in state), "a split client uploaded the server's body"


@pytest.mark.parametrize("name", list_methods())
def test_recorded_messages_match_what_crossed(taps, name):
    """messages.csv tells the truth: every crossing is recorded, with the captured tensors' shapes."""
    tap, _ = taps[name]
    link = _by_client(tap.link)
    for o in tap.outputs:
        cut = [m for m in o.messages if m.kind in ("activation", "gradient")]
        assert all(m.phase == "split_train" for m in cut)
        seen = link.get(o.client_id, [])
        assert [(m.direction, m.kind) for m in cut] == [(c.direction, c.kind) for c in seen]
        assert [m.shapes for m in cut] == [shape_str(c.tensor) for c in seen]
        assert [m.payload_bytes for m in cut] == [c.tensor.numel() * c.tensor.element_size() for c in seen]
        assert {m.kind for m in o.messages} <= {"activation", "gradient", "parameters"}
        ups = [m for m in o.messages if m.kind == "parameters" and m.direction == "up"]
        assert all(m.phase == "upload" for m in ups)
        uploaded = tap.uploads[o.client_id]
        assert sorted(s for m in ups for s in m.shapes.split(";")) == sorted(shape_str(v) for v in uploaded.values())
        assert sum(m.payload_bytes for m in ups) == sum(v.numel() * v.element_size() for v in uploaded.values())


@pytest.mark.parametrize("name", list_methods())
def test_messages_csv_lists_the_shapes_that_crossed_the_cut(taps, name):
    tap, _ = taps[name]
    rows = pd.read_csv(tap.out / "messages.csv", keep_default_na=False)
    for cid, seen in _by_client(tap.link).items():
        cut = rows[(rows["client_id"] == cid) & rows["kind"].isin(["activation", "gradient"])]
        assert list(zip(cut["direction"], cut["kind"], cut["shapes"].astype(str))) == [
            (c.direction, c.kind, shape_str(c.tensor)) for c in seen]
    if not is_split(name):
        assert set(rows["kind"]) == {"parameters"}


def _by_client(crossings: list[Crossing]) -> dict[int, list[Crossing]]:
    out: dict[int, list[Crossing]] = {}
    for c in crossings:
        out.setdefault(c.client_id, []).append(c)
    return out
