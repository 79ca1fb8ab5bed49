"""agents.l2m: the multi-domain Decision Transformer of L2M and its offline agent."""

import minari
import numpy as np
import pytest
import torch

import envs
from agents.l2m import DecisionTransformer, DTConfig, L2MAgent, bin_centers, discretize
from plasticrl.collect import collect_scripted, datasets_path
from plasticrl.modulation import ModulationPool

SMALL = DTConfig(state_dim=7, max_action_dim=3, context=4, d_model=32, n_layers=2, n_heads=2, dropout=0.0,
                 max_timestep=50, return_scale=10.0)


def batch(b=2, t=4, state_width=5, action_width=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, t, state_width, generator=g)
    actions = torch.rand(b, t, action_width, generator=g) * 2 - 1
    rtg = torch.rand(b, t, generator=g) * 20
    timesteps = torch.arange(t).repeat(b, 1) + 3
    return states, actions, rtg, timesteps


def model(config=SMALL, seed=0):
    torch.manual_seed(seed)
    return DecisionTransformer(config).eval()


def test_discretize_bin_centers_roundtrip():
    a = torch.linspace(-1, 1, 10001)
    bins = discretize(a)
    assert bins.dtype == torch.long and bins.min() == 0 and bins.max() == 63
    assert torch.all((bin_centers(bins) - a).abs() <= 1 / 64 + 1e-6)
    assert torch.equal(discretize(bin_centers(torch.arange(64))), torch.arange(64))
    assert discretize(torch.tensor([-5.0, 5.0])).tolist() == [0, 63]  # clipped


def test_wide_state_raises():
    with pytest.raises(ValueError, match="state_dim"):
        model().loss(*batch(state_width=8), action_mask=None)


def test_causality():
    m = model()
    states, actions, rtg, timesteps = batch()
    logits = m(states, actions, rtg, timesteps)
    assert logits.shape == (2, 4, 3, 64)
    later = states.clone()
    later[:, -1] += 1.0
    changed = m(later, actions, rtg, timesteps)
    assert torch.equal(changed[:, :-1], logits[:, :-1])  # earlier timesteps see nothing of s_T
    assert not torch.allclose(changed[:, -1], logits[:, -1])
    later_rtg = rtg.clone()
    later_rtg[:, -1] += 5.0  # R_T precedes s_T: it conditions the last timestep's actions only
    changed = m(states, actions, later_rtg, timesteps)
    assert torch.equal(changed[:, :-1], logits[:, :-1]) and not torch.allclose(changed[:, -1], logits[:, -1])
    # a_T2 is predicted from a_T1's token: changing a_T2 leaves a_T1 and a_T2's own logits unchanged, changes a_T3's
    acts = torch.rand(2, 4, 3) * 2 - 1
    other = acts.clone()
    other[:, -1, 1] = -other[:, -1, 1] + 0.5
    base, moved = m(states, acts, rtg, timesteps), m(states, other, rtg, timesteps)
    assert torch.equal(moved[:, :, :2], base[:, :, :2])
    assert not torch.allclose(moved[:, -1, 2], base[:, -1, 2])


def test_padded_action_dims_are_masked():
    m = model()
    states, _, rtg, timesteps = batch()
    actions = torch.rand(2, 4, 3) * 2 - 1
    mask = torch.tensor([True, True, False])
    other = actions.clone()
    other[..., 2] = -actions[..., 2]
    loss = m.loss(states, actions, rtg, timesteps, mask)
    assert m.loss(states, other, rtg, timesteps, mask) == loss
    all_valid = torch.ones(3, dtype=torch.bool)
    assert m.loss(states, actions, rtg, timesteps, all_valid) != m.loss(states, other, rtg, timesteps, all_valid)
    logits = m(states, actions, rtg, timesteps, mask)[..., :2, :]  # only the two valid dims count
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), discretize(actions[..., :2]).reshape(-1))
    assert torch.allclose(loss, expected)
    # narrower action arrays are padded with a False mask: same loss as the explicit mask
    assert torch.allclose(m.loss(states, actions[..., :2], rtg, timesteps), loss)


def test_overfits_tiny_dataset():
    m = model()
    m.train()
    states, actions, rtg, timesteps = batch(b=4, action_width=3, seed=1)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = float(m.loss(states, actions, rtg, timesteps).detach())
    for _ in range(250):
        loss = m.loss(states, actions, rtg, timesteps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        assert float(m.loss(states, actions, rtg, timesteps)) < 0.05 * first
    assert torch.equal(m(states, actions, rtg, timesteps).argmax(-1), discretize(actions))
    # autoregressive decoding reproduces the last action of each window
    for i in range(4):
        decoded = m.act(states[i], actions[i, :-1], rtg[i], timesteps[i], action_dim=3)
        assert torch.equal(discretize(decoded), discretize(actions[i, -1]))


def test_modulation_pool_lora():
    m = model()
    states, actions, rtg, timesteps = batch()
    before = m(states, actions, rtg, timesteps)
    pool = ModulationPool(pool_size=4, key_dim=SMALL.d_model, rank=2, kind="lora")
    names = pool.attach(m)
    expected = {f"blocks.{i}.{layer}" for i in range(SMALL.n_layers)
                for layer in ("attn.q_proj", "attn.v_proj", "ff.fc1", "ff.fc2")}
    assert set(names) == expected
    query = m.query_embedding(states, timesteps)
    assert query.shape == (2, SMALL.d_model)
    padded = torch.nn.functional.pad(states, (0, SMALL.state_dim - states.shape[-1]))
    assert torch.allclose(query, m.embed_state(padded).mean(dim=1))  # mean embedded state over the context
    idx = pool.select(query)
    with pool.selected(idx):
        assert torch.equal(m(states, actions, rtg, timesteps), before)
    pool.freeze_backbone(m)
    own = {id(p) for p in pool.parameters()}
    m.train()
    with pool.selected(idx):
        m.loss(states, actions, rtg, timesteps).backward()
    grads = {name: p.grad for name, p in m.named_parameters(remove_duplicate=False)}
    assert all(g is None for name, g in grads.items() if id(dict(m.named_parameters())[name]) not in own)
    lora_b = [p for name, p in m.named_parameters() if name.endswith("modulator.B")]
    assert len(lora_b) == len(expected) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


@pytest.fixture(scope="module")
def push_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    dataset_id = collect_scripted("metaworld:push-v3", episodes=2, noise_std=0.1, seed=0, out_dir=out)
    with datasets_path(out):
        return minari.load_dataset(dataset_id)


def rollout(agent, steps=6):
    env = envs.make("metaworld:push-v3")
    obs, _ = env.reset(seed=0)
    agent.reset(target_return=1500.0, action_dim=4)
    actions, reward = [], 0.0
    for _ in range(steps):
        action, state = agent.predict(obs, reward=reward)
        assert state is None
        actions.append(action)
        obs, reward, *_ = env.step(action)
    env.close()
    return np.stack(actions)


def test_agent_end_to_end_on_push(push_dataset, tmp_path):
    config = DTConfig(context=3, d_model=32, n_layers=1, n_heads=2, max_timestep=200)
    agent = L2MAgent(config, device="cpu", learning_rate=1e-3, batch_size=8, seed=0)
    losses = []
    agent.learn([push_dataset], steps=40, callback=lambda step, loss: losses.append(loss))
    assert len(losses) == 40 and np.mean(losses[-5:]) < losses[0]
    actions = rollout(agent)
    assert actions.shape == (6, 4) and actions.dtype == np.float32 and np.all(np.abs(actions) <= 1.0)
    agent.save(tmp_path / "l2m.pt")
    loaded = L2MAgent.load(tmp_path / "l2m.pt", device="cpu")
    assert np.array_equal(rollout(loaded), actions)
    assert np.array_equal(rollout(agent), actions)


def test_agent_learns_from_episode_dicts_and_validates():
    rng = np.random.default_rng(0)
    episode = {"observations": rng.normal(size=(11, 5)), "actions": rng.uniform(-1, 1, (10, 2)),
               "rewards": np.ones(10)}
    agent = L2MAgent(SMALL, device="cpu", batch_size=4)
    agent._prepare([episode])  # rtg per episode from rewards, in reward units
    assert agent._prepare([episode])[0]["rtg"].tolist() == list(range(10, 0, -1))
    agent.learn([episode], steps=2)
    with pytest.raises(ValueError, match="state_dim"):
        agent.learn([{**episode, "observations": rng.normal(size=(11, 8))}], steps=1)
    with pytest.raises(ValueError, match="context"):
        agent.learn([{k: v[:3] for k, v in episode.items()}], steps=1)


def test_agent_windows_and_predict_context():
    steps = 12
    episode = {"observations": np.arange(steps + 1, dtype=np.float32)[:, None].repeat(5, 1),
               "actions": np.linspace(-1, 1, steps * 2).reshape(steps, 2), "rewards": np.arange(steps, dtype=float)}
    agent = L2MAgent(SMALL, device="cpu", batch_size=64, seed=1)
    states, _, rtg, timesteps, mask = agent._batch(agent._prepare([episode]))
    starts = states[:, 0, 0].long()
    assert set(starts.tolist()) == set(range(steps - SMALL.context + 1))  # every window start is sampled
    offsets = torch.arange(SMALL.context)
    assert torch.equal(timesteps, starts[:, None] + offsets) and torch.equal(states[..., 0].long(), timesteps)
    returns_to_go = torch.tensor(np.cumsum(episode["rewards"][::-1])[::-1].copy(), dtype=torch.float32)
    assert torch.equal(rtg, returns_to_go[timesteps])
    assert mask[..., :2].all() and not mask[..., 2:].any()

    # predict keeps the last `context` steps: absolute timesteps, rtg minus the rewards received so far
    rng = np.random.default_rng(0)
    observations, rewards = rng.normal(size=(7, 5)).astype(np.float32), rng.uniform(0, 3, 7)
    agent.reset(target_return=20.0, action_dim=2)
    taken, rtgs = [], [20.0]
    for t in range(7):
        if t:
            rtgs.append(rtgs[-1] - float(rewards[t - 1]))
        action, _ = agent.predict(observations[t], reward=rewards[t - 1] if t else 5.0)  # first: ignored
        first = max(0, t + 1 - SMALL.context)
        expected = agent.model.act(observations[first:t + 1], np.array(taken[first:]).reshape(-1, 2),
                                   np.array(rtgs[first:], np.float32), np.arange(first, t + 1), action_dim=2).numpy()
        assert np.array_equal(action, expected)
        assert agent._rtgs == rtgs  # returns-to-go kept per step, in reward units
        taken.append(action)
