"""Play one episode of a policy exported by `dema-lab export-policy ... --format onnx` and print its
return; numpy, onnxruntime and gymnasium only (ale_py for Atari), no dema-lab.

    python examples/run_onnx_policy.py policy.onnx [--seed 0] [--target R] [--max-steps N]

policy.onnx.json (beside the file) says how to act: normalise s = (obs - state_mean) / state_std, condition
on return-to-go / rtg_scale, and (mode "transformer") build the K-step window exactly as dema-lab's
Policy.window() does, or (mode "rnn") carry the recurrent state the JSON's "recurrent_state" lists
(DeMa's conv and SSM states, an LSTM's h and c, a GRU's h): zeros at the start, each output new_X
fed back as input X.
Atari: dema-lab's games are gymnasium's ALE envs with frameskip=1 and repeat_action_probability=0,
wrapped in AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
terminal_on_life_loss=False) (the DQN preprocessing: max over the last 2 frames, 84x84 grey) and
FrameStackObservation(4): (4, 84, 84) uint8 frames, as built below. The action is the argmax of the
logits (dema-lab samples from their softmax: pass --sample to do the same with numpy).
"""

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort


class OnnxPolicy:
    """act(obs) -> action; observe(reward) after env.step."""

    def __init__(self, path, sample=False, seed=0):
        self.info = info = json.loads(Path(f"{path}.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # batch 1: too small to split
        self.sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        self.K, self.scale, self.act_dim = info["K"], info["rtg_scale"], info["model_config"]["act_dim"]
        self.mean, self.std = np.asarray(info["state_mean"], np.float32), np.asarray(info["state_std"], np.float32)
        self.sample, self.rng = sample, np.random.default_rng(seed)

    def reset(self, target):
        self.t, self.rtg, self.S, self.A, self.R = 0, target / self.scale, [], [], []
        zeros = lambda name: np.zeros(
            [1 if d == "batch" else d for d in self.info["inputs"][name]["shape"]], np.float32
        )
        self.memory = {k: zeros(k) for k in (self.info["recurrent_state"] or {}).get("inputs", [])}

    def act(self, obs):
        obs = np.asarray(obs, np.float32)
        s = ((obs.reshape(-1) - self.mean) / self.std).reshape(obs.shape).astype(np.float32)
        zero, (K, t) = np.zeros(self.act_dim, np.float32), (self.K, self.t)
        prev = self.A[-1] if self.A else zero
        self.S.append(s), self.R.append(self.rtg)
        if self.info["mode"] == "rnn":
            feed = dict(state=s[None], prev_action=prev[None], return_to_go=np.float32([[self.rtg]]),
                        timestep=np.int64([t]), **self.memory)  # fmt: skip
        else:  # the window of steps lo..t; the current action slot is zero
            lo = max(0, t + 1 - K)
            n, before = t + 1 - lo, self.A[lo - 1] if lo > 0 else zero
            acts = self.A[lo:] + [zero] if self.info["window_actions"] == "own" else [before] + self.A[lo:]
            w = [np.stack(self.S[lo:]), np.stack(acts), np.float32(self.R[lo:])[:, None], np.arange(lo, t + 1)]
            left = self.info["window_padding"] == "left"  # else right-padded, window_steps says how far
            pad = lambda x: np.concatenate([np.zeros((K - n, *x.shape[1:]), x.dtype), x][:: 1 if left else -1])
            w = [pad(x)[None] for x in w]
            feed = dict(states=w[0], actions=w[1], returns_to_go=w[2], timesteps=w[3], prev_action=before[None],
                        window_steps=np.int64([n]))  # fmt: skip
        self.last = out = dict(zip(self.info["outputs"], self.sess.run(None, {k: feed[k] for k in self.names})))
        self.memory = {k: out["new_" + k] for k in self.memory}
        action = out["action"][0].astype(np.float32)
        if self.sample and "logits" in out:  # dema-lab's choice: a draw from softmax(logits)
            p = np.exp(out["logits"][0] - out["logits"][0].max())
            action = np.float32([self.rng.choice(len(p), p=p / p.sum())])
        self.A.append(action)
        return action

    def observe(self, reward):
        self.rtg, self.t = self.rtg - reward / self.scale, self.t + 1


def make_env(info):
    if info["env_kind"] != "atari":
        return gym.make(info["gym_id"], max_episode_steps=info["max_episode_steps"])
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(info["gym_id"], frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                   max_num_frames_per_episode=4 * info["max_episode_steps"])  # fmt: skip
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False)
    return gym.wrappers.FrameStackObservation(env, 4)


def play(path, seed=0, target=None, max_steps=None, sample=False):
    """One episode's return."""
    policy = OnnxPolicy(path, sample, seed)
    env = make_env(policy.info)
    policy.reset(policy.info["target_returns"][0] if target is None else target)
    obs, _ = env.reset(seed=seed)
    total, limit = 0.0, max_steps or env.spec.max_episode_steps or 1000
    for _ in range(limit):
        a = policy.act(obs)
        obs, reward, terminated, truncated, _ = env.step(int(a[0]) if "logits" in policy.info["outputs"] else a)
        policy.observe(reward)
        total += float(reward)
        if terminated or truncated:
            break
    return total


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policy"), p.add_argument("--seed", type=int, default=0), p.add_argument("--target", type=float)
    p.add_argument("--max-steps", type=int), p.add_argument("--sample", action="store_true")
    a = p.parse_args()
    print(f"return {play(a.policy, a.seed, a.target, a.max_steps, a.sample):.3f}")
