"""FrameReplayBuffer against a naive reference: exact frame stacks, n-step returns, ring wraparound, memory.

A small synthetic vector env produces uint8 frames whose pixels encode a unique frame id, so every reconstructed
stack can be compared exactly with the stacks that were added. The buffer is driven the way SB3's off-policy
``_store_transition`` drives a replay buffer: one ``add`` per vector step, ``next_obs`` is the terminal observation
when an episode ends (it differs from the reset observation that becomes the next ``obs``), and truncations carry
``infos[i]["TimeLimit.truncated"] = True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from gymnasium import spaces

from plasticrl.agents.drq.replay import FrameReplayBuffer

H, W, FC = 5, 4, 3  # tiny frames, non-square to catch H/W mix-ups
ACTION_SPACE = spaces.Box(-1e7, 1e7, (2,), np.float32)


def obs_space(k: int, dtype=np.uint8, h: int = H, w: int = W) -> spaces.Box:
    return spaces.Box(0, 255, (FC * k, h, w), dtype)


def make_buffer(buffer_size: int, n_envs: int, k: int = 3, n_step: int = 1, gamma: float = 0.9,
                h: int = H, w: int = W) -> FrameReplayBuffer:
    return FrameReplayBuffer(buffer_size, obs_space(k, h=h, w=w), ACTION_SPACE, device="cpu", n_envs=n_envs,
                             n_step=n_step, gamma=gamma, buffer_device="cpu")


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny gathers: intra-op threads only add contention (10 ms instead of 40 us per gather on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- synthetic env + reference


def encode(fid: int, env: int) -> np.ndarray:
    """A (3, H, W) uint8 frame that encodes a unique id (and its env) in its pixels."""
    assert fid < 256 * 256
    f = np.empty((FC, H, W), dtype=np.uint8)
    f[0] = fid % 256
    f[1] = fid // 256
    f[2] = (np.arange(H * W).reshape(H, W) * 7 + env * 50 + fid) % 256  # spatially varying
    return f


@dataclass
class Ref:
    env: int
    obs: np.ndarray
    next_obs: np.ndarray
    reward: float
    terminated: bool
    end: bool


class SyntheticVecEnv:
    """n_envs frame-stacked episodes of varied lengths, ending by termination or truncation."""

    def __init__(self, n_envs: int, k: int, seed: int, lengths=(1, 2, 3, 4, 6, 9, 13, 25), reset_pad: str = "repeat",
                 env_lengths: list[tuple[int, ...]] | None = None):
        self.n, self.k = n_envs, k
        self.rng = np.random.default_rng(seed)
        self.env_lengths = env_lengths or [lengths] * n_envs
        self.reset_pad = reset_pad
        self.fid = 0
        self.stacks: list[list[np.ndarray]] = [self._reset(e) for e in range(n_envs)]
        self.ref: list[Ref] = []
        self.n_term = self.n_trunc = 0

    def _frame(self, e: int) -> np.ndarray:
        self.fid += 1
        return encode(self.fid, e)

    def _reset(self, e: int) -> list[np.ndarray]:
        self.t_left = getattr(self, "t_left", [0] * self.n)
        self.ending = getattr(self, "ending", [None] * self.n)
        self.t_left[e] = int(self.rng.choice(self.env_lengths[e]))
        self.ending[e] = "trunc" if self.rng.random() < 0.5 else "term"
        f = self._frame(e)
        if self.reset_pad == "repeat":  # like plasticrl/envs/dmc.py: the first frame repeated
            return [f] * self.k
        return [np.zeros_like(f)] * (self.k - 1) + [f]  # like SB3's VecFrameStack: zero padding

    def step(self, buf: FrameReplayBuffer) -> None:
        obs = np.stack([np.concatenate(s) for s in self.stacks])
        next_obs = np.empty_like(obs)
        reward = self.rng.normal(size=self.n).astype(np.float32)
        done = np.zeros(self.n, dtype=bool)
        infos: list[dict] = [{} for _ in range(self.n)]
        action = np.empty((self.n, 2), dtype=np.float32)
        base = len(self.ref)
        for e in range(self.n):
            action[e] = (base + e, e)  # unique per transition: its absolute number
            nxt = self.stacks[e][1:] + [self._frame(e)]
            next_obs[e] = np.concatenate(nxt)
            self.t_left[e] -= 1
            terminated = False
            if self.t_left[e] == 0:
                done[e] = True
                infos[e]["terminal_observation"] = next_obs[e].copy()
                if self.ending[e] == "trunc":
                    infos[e]["TimeLimit.truncated"] = True
                    self.n_trunc += 1
                else:
                    infos[e]["TimeLimit.truncated"] = False
                    terminated = True
                    self.n_term += 1
                self.stacks[e] = self._reset(e)
                assert not np.array_equal(np.concatenate(self.stacks[e]), next_obs[e])
            else:
                self.stacks[e] = nxt
            self.ref.append(Ref(e, obs[e].copy(), next_obs[e].copy(), float(reward[e]), terminated, bool(done[e])))
        buf.add(obs, next_obs, action, reward, done, infos)


def nstep_reference(ref: list[Ref], t: int, n_envs: int, n_step: int, gamma: float):
    """sum_{j<m} gamma^j r_{t+j} over the env's consecutive transitions; discount gamma^m, 0 after termination."""
    ret, disc, last = 0.0, 1.0, t
    for j in range(n_step):
        u = t + j * n_envs
        if u >= len(ref):
            break
        assert ref[u].env == ref[t].env
        ret += disc * ref[u].reward
        disc *= gamma
        last = u
        if ref[u].terminated:
            disc = 0.0
            break
        if ref[u].end:
            break
    return ret, disc, ref[last].next_obs


def check_all_intact(buf: FrameReplayBuffer, ref: list[Ref]) -> None:
    """Every transition the buffer regards as sampleable rebuilds exactly the obs/next_obs stacks that were added."""
    assert buf.transitions_written == len(ref)
    assert 0 < buf.size() <= min(buf.buffer_size, len(ref))
    valid = np.arange(buf.transitions_written - buf.size(), buf.transitions_written)
    slots = torch.as_tensor(valid % buf.buffer_size)
    obs = buf.stack(buf.obs_slot[slots]).numpy()
    nxt = buf.stack(buf.next_slot[slots]).numpy()
    want_obs = np.stack([ref[t].obs for t in valid])
    want_next = np.stack([ref[t].next_obs for t in valid])
    bad = [int(t) for t, a, b in zip(valid, obs, want_obs) if not np.array_equal(a, b)]
    assert not bad, f"obs stacks differ for transitions {bad[:10]} (written {len(ref)}, size {buf.size()})"
    bad = [int(t) for t, a, b in zip(valid, nxt, want_next) if not np.array_equal(a, b)]
    assert not bad, f"next_obs stacks differ for transitions {bad[:10]} (written {len(ref)}, size {buf.size()})"
    np.testing.assert_array_equal(buf.actions[slots, 0].numpy(), valid.astype(np.float32))
    np.testing.assert_array_equal(buf.rewards[slots].numpy(), np.float32([ref[t].reward for t in valid]))
    np.testing.assert_array_equal(buf.terminated[slots].numpy(), [ref[t].terminated for t in valid])
    np.testing.assert_array_equal(buf.episode_end[slots].numpy(), [ref[t].end for t in valid])


def check_samples(buf: FrameReplayBuffer, ref: list[Ref], n_envs: int, n_step: int, gamma: float,
                  batch: int = 2048) -> set[int]:
    """Samples a batch and checks each row against the reference transition named by its action."""
    b = buf.sample(batch)
    assert b.observations.shape == (batch, FC * buf.frame_stack, H, W) and b.observations.dtype == torch.uint8
    assert b.next_observations.shape == b.observations.shape and b.next_observations.dtype == torch.uint8
    assert b.actions.shape == (batch, 2) and b.rewards.shape == (batch, 1) and b.discounts.shape == (batch, 1)
    ids = b.actions[:, 0].numpy().astype(np.int64)
    np.testing.assert_array_equal(ids, b.actions[:, 0].numpy())  # integral
    # only transitions still in the window of the last buffer_size transitions
    assert ids.min() >= max(0, len(ref) - buf.buffer_size) and ids.max() < len(ref)
    assert ids.min() >= len(ref) - buf.size()
    lo = len(ref) - buf.size()
    want = [nstep_reference(ref, t, n_envs, n_step, gamma) for t in range(lo, len(ref))]
    rows = ids - lo
    np.testing.assert_array_equal(b.actions[:, 1].numpy(), np.float32([ref[t].env for t in range(lo, len(ref))])[rows])
    np.testing.assert_array_equal(b.observations.numpy(), np.stack([ref[t].obs for t in range(lo, len(ref))])[rows])
    np.testing.assert_array_equal(b.next_observations.numpy(), np.stack([w[2] for w in want])[rows])
    np.testing.assert_allclose(b.rewards[:, 0].numpy(), np.array([w[0] for w in want])[rows], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.discounts[:, 0].numpy(), np.array([w[1] for w in want])[rows], rtol=1e-6, atol=1e-7)
    return set(ids.tolist())


# --------------------------------------------------------------------------- end-to-end against the reference


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("reset_pad", ["repeat", "zeros"])
def test_stacks_nstep_and_wraparound_match_reference(n_envs, n_step, reset_pad):
    gamma, bs, k = 0.9, 50, 3
    torch.manual_seed(0)
    buf = make_buffer(bs, n_envs, k=k, n_step=n_step, gamma=gamma)
    env = SyntheticVecEnv(n_envs, k, seed=10 * n_envs + n_step, reset_pad=reset_pad)
    steps = 600 // n_envs
    seen_terminal_discounts = set()
    for step in range(steps):
        env.step(buf)
        assert buf.size() <= bs
        assert buf.pos == len(env.ref) % bs and buf.full == (len(env.ref) >= bs)
        check_all_intact(buf, env.ref)
        if step % 5 == 0 or step >= steps - 3:
            window = set(range(len(env.ref) - buf.size(), len(env.ref)))
            sampled = check_samples(buf, env.ref, n_envs, n_step, gamma)
            assert sampled == window, "uniform sampling over the intact window should reach every transition"
        for t in range(max(0, len(env.ref) - bs), len(env.ref)):
            if env.ref[t].end and t >= len(env.ref) - buf.size():
                seen_terminal_discounts.add(env.ref[t].terminated)
    assert buf.transitions_written >= 10 * bs  # many wraps of the transition ring
    assert buf.frames_written > 5 * buf.frame_capacity  # and of the frame ring
    assert env.n_term > 10 and env.n_trunc > 10
    assert seen_terminal_discounts == {True, False}


@pytest.mark.parametrize("k,n_step", [(5, 1), (5, 3), (4, 1), (3, 1)])
def test_no_overwritten_frames_when_other_envs_reset_every_step(k, n_step):
    """Worst case for the frame ring: env 0 runs a long episode while the other envs end an episode every step,
    each start writing k + 1 frames. The transitions of env 0 then need frames much older than those of the
    transitions just before them, so validity can't be decided by the oldest frame of the oldest transition alone."""
    n_envs, gamma, bs = 4, 0.9, 40
    buf = make_buffer(bs, n_envs, k=k, n_step=n_step, gamma=gamma)
    env = SyntheticVecEnv(n_envs, k, seed=3, env_lengths=[(200,)] + [(1,)] * (n_envs - 1))
    for _ in range(120):
        env.step(buf)
        check_all_intact(buf, env.ref)
    check_samples(buf, env.ref, n_envs, n_step, gamma)


def test_size_stays_near_capacity_with_long_episodes():
    """With long episodes, few extra reset frames are needed, so almost the whole transition ring stays sampleable."""
    n_envs, bs = 3, 300
    buf = make_buffer(bs, n_envs, n_step=3)
    env = SyntheticVecEnv(n_envs, 3, seed=1, lengths=(60, 80, 100))
    sizes = []
    for _ in range(3 * bs // n_envs):
        env.step(buf)
        sizes.append(buf.size())
    check_all_intact(buf, env.ref)
    assert max(sizes) == bs
    assert min(sizes[bs // n_envs:]) >= 0.9 * bs, min(sizes[bs // n_envs:])
    assert sizes[: bs // n_envs - 1] == [n_envs * (i + 1) for i in range(bs // n_envs - 1)]  # nothing dropped early


def test_truncation_bootstraps_and_termination_does_not():
    """Hand-made single env: episode A (2 steps, truncated), episode B (3 steps, terminated), then 1 step of C."""
    gamma = 0.5
    buf = make_buffer(100, 1, k=3, n_step=3, gamma=gamma)
    f = {i: encode(i, 0) for i in range(20)}

    def stk(*ids):
        return np.concatenate([f[i] for i in ids])[None]

    rows = [  # obs ids, next_obs ids, reward, done, truncated
        ((1, 1, 1), (1, 1, 2), 1.0, False, False),
        ((1, 1, 2), (1, 2, 3), 2.0, True, True),  # truncated: next_obs is the terminal obs
        ((4, 4, 4), (4, 4, 5), 4.0, False, False),  # reset obs differs from the terminal obs above
        ((4, 4, 5), (4, 5, 6), 8.0, False, False),
        ((4, 5, 6), (5, 6, 7), 16.0, True, False),  # terminated
        ((8, 8, 8), (8, 8, 9), 32.0, False, False),
    ]
    for i, (o, n, r, d, tr) in enumerate(rows):
        info = {"TimeLimit.truncated": True} if tr else {}
        buf.add(stk(*o), stk(*n), np.array([[i, 0]], np.float32), np.array([r], np.float32), np.array([d]), [info])
    want = {  # transition: (reward, discount, next_obs ids)
        0: (1 + 0.5 * 2, 0.25, (1, 2, 3)),
        1: (2.0, 0.5, (1, 2, 3)),
        2: (4 + 0.5 * 8 + 0.25 * 16, 0.0, (5, 6, 7)),
        3: (8 + 0.5 * 16, 0.0, (5, 6, 7)),
        4: (16.0, 0.0, (5, 6, 7)),
        5: (32.0, 0.5, (8, 8, 9)),  # newest transition: the chain stops there
    }
    torch.manual_seed(0)
    b = buf.sample(512)
    got = set()
    for i in range(512):
        t = int(b.actions[i, 0])
        got.add(t)
        r, d, n = want[t]
        np.testing.assert_array_equal(b.observations[i].numpy(), stk(*rows[t][0])[0])
        np.testing.assert_array_equal(b.next_observations[i].numpy(), stk(*n)[0])
        assert b.rewards[i, 0].item() == pytest.approx(r)
        assert b.discounts[i, 0].item() == pytest.approx(d)
    assert got == set(want)


def test_nstep_chain_follows_own_env_with_interleaved_envs():
    """3 envs with very different rewards: an n-step return must only sum its own env's rewards."""
    n_envs, gamma = 3, 0.9
    buf = make_buffer(60, n_envs, k=2, n_step=3, gamma=gamma)
    frame = {}
    fid = 0
    cur = {}
    for e in range(n_envs):
        fid += 1
        cur[e] = np.concatenate([encode(fid, e)] * 2)  # reset stack: first frame repeated
    for step in range(6):
        obs = np.stack([cur[e] for e in range(n_envs)])
        nxt = np.zeros_like(obs)
        for e in range(n_envs):
            fid += 1
            nxt[e] = np.concatenate([obs[e][3:], encode(fid, e)])
            frame[(step, e)] = cur[e] = nxt[e]
        rew = np.array([1.0, 100.0, 10_000.0], np.float32) * (step + 1)
        act = np.array([[step, e] for e in range(n_envs)], np.float32)
        buf.add(obs, nxt, act, rew, np.zeros(n_envs, bool), [{} for _ in range(n_envs)])
    torch.manual_seed(1)
    b = buf.sample(1024)
    for i in range(1024):
        step, e = int(b.actions[i, 0]), int(b.actions[i, 1])
        base = [1.0, 100.0, 10_000.0][e]
        m = min(3, 6 - step)
        want = sum(gamma**j * base * (step + 1 + j) for j in range(m))
        assert b.rewards[i, 0].item() == pytest.approx(want, rel=1e-5)
        assert b.discounts[i, 0].item() == pytest.approx(gamma**m)
        np.testing.assert_array_equal(b.next_observations[i].numpy(), frame[(step + m - 1, e)])


# --------------------------------------------------------------------------- memory and validation


def test_frames_stored_once_not_as_stacks():
    bs, k, n_envs = 10_000, 3, 4
    buf = make_buffer(bs, n_envs, k=k, n_step=3, h=32, w=32)
    assert buf.frame_stack == k
    assert buf.frames.dtype == torch.uint8
    assert tuple(buf.frames.shape[1:]) == (3, 32, 32)  # single frames, not k*3-channel stacks
    assert bs <= buf.frames.shape[0] <= 1.2 * bs + 200
    frame_bytes = buf.frames.numel() * buf.frames.element_size()
    sb3_bytes = bs * 2 * k * 3 * 32 * 32  # SB3: obs + next_obs, full stacks
    assert frame_bytes < 0.25 * sb3_bytes
    # no other tensor of the buffer holds pixels
    for name, v in vars(buf).items():
        if isinstance(v, torch.Tensor) and v is not buf.frames:
            assert v.numel() * v.element_size() < 0.05 * frame_bytes, name


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(0, 1, (9, H, W), np.float32),  # not uint8
        spaces.Box(0, 255, (9, H, W), np.int16),
        spaces.Box(0, 255, (9 * H * W,), np.uint8),  # not an image
        spaces.Box(0, 255, (1, 9, H, W), np.uint8),
        spaces.Discrete(5),
    ],
    ids=["float32", "int16", "flat-uint8", "4d-uint8", "discrete"],
)
def test_rejects_non_uint8_or_non_image_spaces(space):
    with pytest.raises(ValueError, match="uint8 image"):
        FrameReplayBuffer(10, space, ACTION_SPACE, device="cpu", buffer_device="cpu")


def test_rejects_channels_not_a_multiple_of_frame_channels():
    with pytest.raises(ValueError, match="frame_channels"):
        FrameReplayBuffer(10, spaces.Box(0, 255, (4, H, W), np.uint8), ACTION_SPACE, device="cpu",
                          buffer_device="cpu")


def test_sampling_empty_buffer_raises():
    with pytest.raises(RuntimeError, match="empty"):
        make_buffer(10, 1).sample(4)
