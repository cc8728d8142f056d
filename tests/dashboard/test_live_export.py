"""/live's export button: the selected checkpoint as an ONNX graph and its JSON, zipped; the graph
acts as dema-lab's Policy does."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import onnxruntime as ort
from helpers.browser import ARTIFACTS, Page, Server

from dema_lab.dashboard.live.state import LiveState
from dema_lab.models import load_checkpoint
from dema_lab.models.policy import Policy
from dema_lab.store.zarr_store import RunStore


def check_zip(data: bytes, store, run_id: str, step: int, mode: str):
    """The zip holds policy.onnx and policy.onnx.json of run_id@step in `mode`; its first action
    on an observation is Policy.act's."""
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["policy.onnx", "policy.onnx.json"]
    info = json.loads(z.read("policy.onnx.json"))
    assert (info["run_id"], info["checkpoint_step"], info["mode"], info["env"]) == (run_id, step, mode, "hopper")
    assert info["provenance"]["dataset"] and info["target_returns"]
    ck = load_checkpoint(RunStore(store).run(run_id).checkpoint_bytes(step))
    obs = np.linspace(-1, 1, 11, dtype=np.float32)
    policy = Policy(ck.model, mode, *ck.state_normalization(), rtg_scale=info["rtg_scale"])
    policy.reset(info["target_returns"][0])
    want = policy.act(obs)
    s = (obs - np.float32(info["state_mean"])) / np.float32(info["state_std"])
    rtg = np.float32(info["target_returns"][0] / info["rtg_scale"])
    sess = ort.InferenceSession(z.read("policy.onnx"), providers=["CPUExecutionProvider"])
    if mode == "rnn":
        shape = lambda name: [1 if d == "batch" else d for d in info["inputs"][name]["shape"]]  # noqa: E731
        feed = dict(state=s[None], prev_action=np.zeros((1, 3), np.float32), return_to_go=np.float32([[rtg]]),
                    timestep=np.int64([0]), conv_state=np.zeros(shape("conv_state"), np.float32),
                    ssm_state=np.zeros(shape("ssm_state"), np.float32))  # fmt: skip
    else:
        K = info["K"]
        pad = lambda x: np.concatenate([x, np.zeros((K - 1, *x.shape[1:]), x.dtype)])[None]  # noqa: E731
        feed = dict(states=pad(s[None]), actions=pad(np.zeros((1, 3), np.float32)), returns_to_go=pad(np.float32([[rtg]])),
                    timesteps=pad(np.int64([0])), prev_action=np.zeros((1, 3), np.float32), window_steps=np.int64([1]))  # fmt: skip
    got = sess.run(["action"], {i.name: feed[i.name] for i in sess.get_inputs()})[0][0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_live_state_exports_the_selected_checkpoint(dash_store):
    live = LiveState(dash_store, checkpoint="tiny-K3@10", mode="rnn")
    assert live.export_filename == "tiny-K3-step10-rnn-onnx.zip"
    check_zip(live.policy_zip().read(), dash_store, "tiny-K3", 10, "rnn")
    live.mode = "transformer"
    check_zip(live.policy_zip().read(), dash_store, "tiny-K3", 10, "transformer")
    assert live.message == ""


def test_browser_live_export_button_downloads_the_policy(dash_store, browser):
    server = Server(dash_store, ARTIFACTS / "live-export-server.log")
    try:
        p = Page(browser, server.url("live"))
        page = p.page
        button = page.locator(".dema-live-export button")
        button.wait_for(timeout=60_000)
        with page.expect_download(timeout=60_000) as got:
            button.click()
        name = got.value.suggested_filename
        match = re.fullmatch(r"(tiny-K\d)-step(\d+)-transformer-onnx\.zip", name)
        assert match, name
        path = ARTIFACTS / name
        got.value.save_as(path)
        check_zip(path.read_bytes(), dash_store, match[1], int(match[2]), "transformer")
        p.check_clean()
        page.close()
    finally:
        server.stop()
