"""A pixel replay buffer that stores every frame once and samples frame stacks and n-step returns by index.

SB3's ``ReplayBuffer`` keeps ``obs`` and ``next_obs`` as full stacks: 2 x frame_stack copies of each frame. This
buffer keeps each frame once (uint8, 3 x H x W) in a ring, plus a ``prev`` pointer per frame to the frame before it
in the same episode (a first frame points to itself, which repeats it, as frame stacking does at reset). A stack of
k frames is k - 1 gathers along ``prev``. All storage and sampling live on ``storage_device`` (the GPU when it fits),
so a sampled batch never crosses the PCIe bus and sampling needs no host sync.

Transitions are stored in the order SB3 adds them: one per env per vector step, so the next transition of the same
env is ``n_envs`` slots later. n-step returns follow that chain up to ``n_step`` transitions, stopping at an episode
end or at the newest transition, and return the discount to apply to the bootstrap (``gamma**m``, or 0 after a
true termination).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer


class PixelBatch(NamedTuple):
    """A sampled batch. obs/next_obs: (B, k*3, H, W) uint8; actions (B, A) float32; rewards, discounts (B, 1)."""

    observations: torch.Tensor
    actions: torch.Tensor
    next_observations: torch.Tensor
    rewards: torch.Tensor
    discounts: torch.Tensor


def resolve_storage_device(storage: str, device: torch.device, nbytes: int) -> torch.device:
    """``auto``: the training device if it is CUDA and the buffer fits in 90 % of its free memory, else CPU."""
    if storage == "cpu" or device.type != "cuda":
        return torch.device("cpu")
    if storage == "cuda":
        return device
    if storage != "auto":
        raise ValueError(f"buffer_device={storage!r}: allowed are 'auto', 'cuda', 'cpu'")
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes < 0.9 * free else torch.device("cpu")


class FrameReplayBuffer(BaseBuffer):
    """Replay buffer for channel-first uint8 frame stacks (k*3, H, W); every frame stored once.

    :param buffer_size: number of transitions kept (all envs together).
    :param n_step: length of the n-step return (1 = plain TD).
    :param gamma: discount for n-step returns.
    :param frame_channels: channels of one frame (3 for RGB).
    :param buffer_device: ``auto`` | ``cuda`` | ``cpu`` where frames live; CPU storage is pinned when CUDA trains.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        n_step: int = 1,
        gamma: float = 0.99,
        frame_channels: int = 3,
        buffer_device: str = "auto",
    ):
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs)
        if not (isinstance(observation_space, spaces.Box) and observation_space.dtype == np.uint8
                and len(observation_space.shape) == 3):
            raise ValueError(
                f"FrameReplayBuffer needs channel-first uint8 image stacks (k*3, H, W), got {observation_space}; "
                "for state observations use SB3's ReplayBuffer (pixels: true in the env config for DrQ)."
            )
        c, h, w = observation_space.shape
        if c % frame_channels:
            raise ValueError(f"observation channels {c} are not a multiple of frame_channels={frame_channels}")
        self.frame_stack = c // frame_channels
        self.frame_channels = frame_channels
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        # Frames: one per transition, plus the extra frames of each episode start, plus slack so that a stack
        # reaching back frame_stack frames of any env is never overwritten while its transition is sampleable.
        # The oldest frame a transition needs is not monotone in transition order (an env that just reset needs
        # only new frames; the next transition of a long-running env needs one from k vector steps back), and
        # validity is decided at the oldest intact transition only. Every transition after it needs no frame
        # older than the k + 1 vector steps before it, each writing at most n_envs * (k + 1) frames, hence
        # n_envs * (k + 1)**2 frames of slack.
        self.slack = max(2 * n_envs * (self.frame_stack + self.n_step + 2), n_envs * (self.frame_stack + 1) ** 2)
        self.frame_capacity = buffer_size + buffer_size // 8 + self.slack + n_envs * self.frame_stack
        frame_bytes = self.frame_capacity * frame_channels * h * w
        self.storage = resolve_storage_device(buffer_device, self.device, frame_bytes)
        pin = self.storage.type == "cpu" and self.device.type == "cuda"
        st = self.storage
        self.frames = torch.zeros((self.frame_capacity, frame_channels, h, w), dtype=torch.uint8, device=st)
        if pin:
            self.frames = self.frames.pin_memory()
        self.prev = torch.zeros(self.frame_capacity, dtype=torch.long, device=st)
        self.obs_slot = torch.zeros(buffer_size, dtype=torch.long, device=st)
        self.next_slot = torch.zeros(buffer_size, dtype=torch.long, device=st)
        self.actions = torch.zeros((buffer_size, self.action_dim), dtype=torch.float32, device=st)
        self.rewards = torch.zeros(buffer_size, dtype=torch.float32, device=st)
        self.terminated = torch.zeros(buffer_size, dtype=torch.bool, device=st)
        self.episode_end = torch.zeros(buffer_size, dtype=torch.bool, device=st)
        # Host bookkeeping (no device reads): counts of frames/transitions ever written, and per transition the
        # global count of the oldest frame its obs stack needs, to know which transitions are still intact.
        self.frames_written = 0
        self.transitions_written = 0
        self.oldest_valid = 0
        self._oldest_frame_of = np.zeros(buffer_size, dtype=np.int64)
        self._stacks: list[list[int]] = [[] for _ in range(n_envs)]  # global counts of each env's current stack
        # The same counts on the storage device, read by ``sample`` so that it has no host-side values and can be
        # captured into a CUDA graph: [oldest intact transition, intact transitions, transitions written].
        self.bounds = torch.zeros(3, dtype=torch.long, device=st)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling; buffers pickled before ``bounds`` existed get it from their host counts."""
        self.__dict__.update(state)
        if "bounds" not in state:
            self.bounds = self._host_bounds().to(self.storage)

    def _host_bounds(self) -> torch.Tensor:
        """The host counts that ``bounds`` mirrors: [oldest intact transition, intact transitions, written]."""
        return torch.tensor([self.oldest_valid, self.size(), self.transitions_written])

    # ------------------------------------------------------------------ writing
    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Adds one vector step: obs/next_obs (n_envs, k*3, H, W) uint8, action (n_envs, A), reward/done (n_envs,)."""
        fc, k, n = self.frame_channels, self.frame_stack, self.n_envs
        obs = np.asarray(obs).reshape(n, k, fc, *obs.shape[-2:])
        next_obs = np.asarray(next_obs).reshape(n, k, fc, *next_obs.shape[-2:])
        frames, prev = [], []
        obs_slot = np.empty(n, dtype=np.int64)
        next_slot = np.empty(n, dtype=np.int64)
        obs_oldest = np.empty(n, dtype=np.int64)
        for e in range(n):
            if not self._stacks[e]:  # episode start: write the whole first stack, oldest frame first
                for j in range(k):
                    slot = self._next_count(len(frames)) % self.frame_capacity
                    prev.append(slot if j == 0 else self._stacks[e][-1] % self.frame_capacity)
                    frames.append(obs[e, j])
                    self._stacks[e].append(self._next_count(len(frames) - 1))
            obs_slot[e] = self._stacks[e][-1] % self.frame_capacity
            obs_oldest[e] = self._stacks[e][0]
            count = self._next_count(len(frames))
            prev.append(obs_slot[e])
            frames.append(next_obs[e, -1])
            next_slot[e] = count % self.frame_capacity
            self._stacks[e] = self._stacks[e][1:] + [count]
        done = np.asarray(done, dtype=bool).reshape(n)
        truncated = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos], dtype=bool)
        t = (self.transitions_written + np.arange(n)) % self.buffer_size
        slots = (self.frames_written + np.arange(len(frames))) % self.frame_capacity
        self.frames_written += len(frames)
        (slots, frames, prev, ti, obs_slot, next_slot, action, reward, terminated, ended) = self._to_storage(
            slots, np.stack(frames), np.asarray(prev, dtype=np.int64), t, obs_slot, next_slot,
            np.asarray(action, dtype=np.float32).reshape(n, -1), np.asarray(reward, dtype=np.float32).reshape(n),
            done & ~truncated, done)
        self.frames[slots] = frames
        self.prev[slots] = prev
        self.obs_slot[ti] = obs_slot
        self.next_slot[ti] = next_slot
        self.actions[ti] = action
        self.rewards[ti] = reward
        self.terminated[ti] = terminated
        self.episode_end[ti] = ended
        self._oldest_frame_of[t] = obs_oldest
        self.transitions_written += n
        for e in np.flatnonzero(done):
            self._stacks[e] = []
        # Transitions whose oldest frame has been (or soon will be) overwritten are no longer sampleable.
        limit = self.frames_written - self.frame_capacity + self.slack
        self.oldest_valid = max(self.oldest_valid, self.transitions_written - self.buffer_size)
        while self.oldest_valid < self.transitions_written and \
                self._oldest_frame_of[self.oldest_valid % self.buffer_size] < limit:
            self.oldest_valid += 1
        self.pos = self.transitions_written % self.buffer_size
        self.full = self.transitions_written >= self.buffer_size
        self.bounds.copy_(self._to_storage(self._host_bounds().numpy())[0])

    def end_episodes(self) -> None:
        """Ends every env's unfinished episode at its last stored transition, as a truncation (no terminal state):
        for a run whose envs start new episodes without finishing these (a resume that could not restore the envs),
        so that no frame stack or n-step return joins two episodes."""
        n = self.n_envs
        for e in range(n):
            if self._stacks[e] and self.transitions_written >= n:
                self.episode_end[(self.transitions_written - n + e) % self.buffer_size] = True
            self._stacks[e] = []

    def _to_storage(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """``arrays`` as tensors on the storage device. For the GPU they are packed into one pinned staging block
        (each at an 8-byte-aligned offset) and sent with one non-blocking copy, then viewed back per array: the
        copy is queued behind the updates already launched, and the host does not wait for them (a pageable copy
        would). PyTorch's pinned-memory cache keeps the staging block until its copy has run."""
        arrays = tuple(np.ascontiguousarray(a) for a in arrays)
        if self.storage.type != "cuda":
            return [torch.from_numpy(a) for a in arrays]
        offsets, total = [], 0
        for a in arrays:
            offsets.append(total)
            total += -(-a.nbytes // 8) * 8
        staging = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        flat = staging.numpy()
        for a, off in zip(arrays, offsets):
            flat[off: off + a.nbytes] = a.reshape(-1).view(np.uint8)
        block = staging.to(self.storage, non_blocking=True)
        dtypes = [torch.from_numpy(np.empty(0, a.dtype)).dtype for a in arrays]
        return [block[off: off + a.nbytes].view(dtype).reshape(a.shape)
                for a, off, dtype in zip(arrays, offsets, dtypes)]

    def _next_count(self, offset: int) -> int:
        return self.frames_written + offset

    # ------------------------------------------------------------------ reading
    def size(self) -> int:
        return self.transitions_written - self.oldest_valid

    def stack(self, slots: torch.Tensor) -> torch.Tensor:
        """Frame stacks ending at ``slots`` (B,): (B, k*3, H, W) uint8, oldest frame first."""
        chain = [slots]
        for _ in range(self.frame_stack - 1):
            chain.append(self.prev[chain[-1]])
        idx = torch.stack(chain[::-1], dim=1)  # (B, k)
        out = self.frames[idx]  # (B, k, C, H, W)
        return out.flatten(1, 2)

    def sample_indices(self, batch_size: int) -> torch.Tensor:
        """Uniform absolute transition numbers (B,) over the intact transitions, on the storage device.

        Reads the counts from ``bounds`` (device), not from host ints, so a captured CUDA graph samples from the
        buffer's current contents on every replay. Uniform: floor(u * n) with u ~ U[0, 1) in float64."""
        if self.size() <= 0:
            raise RuntimeError("the replay buffer is empty: collect transitions before sampling")
        u = torch.rand(batch_size, dtype=torch.float64, device=self.storage)
        return (u * self.bounds[1]).long() + self.bounds[0]

    def sample(self, batch_size: int, env: Any = None) -> PixelBatch:  # type: ignore[override]
        """A batch on the training device; n-step rewards and bootstrap discounts computed on the fly. With CUDA
        storage it makes no host sync and can be captured in a CUDA graph (see ``DrQ``)."""
        first = self.sample_indices(batch_size)
        idx = first % self.buffer_size
        newest = self.bounds[2]  # transition numbers from here on don't exist yet
        reward = torch.zeros(batch_size, dtype=torch.float32, device=self.storage)
        discount = torch.ones(batch_size, dtype=torch.float32, device=self.storage)
        alive = torch.ones(batch_size, dtype=torch.bool, device=self.storage)
        last = idx
        for j in range(self.n_step):
            cur_abs = first + j * self.n_envs
            exists = cur_abs < newest
            step_alive = alive & exists
            cur = cur_abs % self.buffer_size
            reward = reward + torch.where(step_alive, discount * self.rewards[cur], 0.0)
            discount = torch.where(step_alive, discount * self.gamma, discount)
            discount = torch.where(step_alive & self.terminated[cur], 0.0, discount)
            last = torch.where(step_alive, cur, last)
            alive = step_alive & ~self.episode_end[cur]
        obs = self.stack(self.obs_slot[idx])
        next_obs = self.stack(self.next_slot[last])
        dev = self.device
        nb = dev.type == "cuda"
        return PixelBatch(
            observations=obs.to(dev, non_blocking=nb),
            actions=self.actions[idx].to(dev, non_blocking=nb),
            next_observations=next_obs.to(dev, non_blocking=nb),
            rewards=reward.unsqueeze(1).to(dev, non_blocking=nb),
            discounts=discount.unsqueeze(1).to(dev, non_blocking=nb),
        )

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> PixelBatch:  # pragma: no cover - unused
        raise NotImplementedError("FrameReplayBuffer samples with sample(); it has no numpy index path")
