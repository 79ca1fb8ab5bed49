"""plasticrl.agents.l2m: the multi-domain Decision Transformer of L2M and its offline agent."""

import contextlib
import subprocess
import sys

import minari
import numpy as np
import pytest
import torch

from plasticrl import envs
from plasticrl.agents.l2m import DecisionTransformer, DTConfig, L2MAgent, bin_centers, discretize
from plasticrl.lab.collect import collect_scripted, datasets_path
from plasticrl.modulation import ModulationPool

SMALL = DTConfig(state_dim=7, max_action_dim=3, context=4, d_model=32, n_layers=2, n_heads=2, dropout=0.0,
                 max_timestep=50)


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


def test_query_is_the_mean_layer_normed_state_token():
    """L2M's query: the mean over the context of embed_ln(state embedding + timestep embedding) at the state tokens
    (here plus the state type's embedding), by hand from the weights; it is what the first block sees there."""
    m = model()
    with torch.no_grad():  # LayerNorm's affine parameters away from their (1, 0) init, so that they count
        m.embed_ln.weight.uniform_(0.5, 1.5)
        m.embed_ln.bias.uniform_(-0.5, 0.5)
    states, actions, rtg, timesteps = batch()
    query = m.query_embedding(states, timesteps)
    assert query.shape == (2, SMALL.d_model)
    w, b = m.embed_state.weight.detach().double().numpy(), m.embed_state.bias.detach().double().numpy()
    padded = np.pad(states.double().numpy(), ((0, 0), (0, 0), (0, SMALL.state_dim - states.shape[-1])))
    x = padded @ w.T + b + m.embed_timestep.weight.detach().double().numpy()[timesteps.numpy()]
    x = x + m.embed_type.weight.detach().double().numpy()[1]
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    by_hand = (normed * m.embed_ln.weight.detach().double().numpy() + m.embed_ln.bias.detach().double().numpy())
    np.testing.assert_allclose(query.detach().numpy(), by_hand.mean(axis=1), rtol=1e-4, atol=1e-5)
    seen = []
    handle = m.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    m(states, actions, rtg, timesteps)
    handle.remove()
    state_tokens = seen[0][:, 1::m.tokens_per_step]  # [R, s, a_1..a_A] per timestep
    torch.testing.assert_close(query, state_tokens.mean(dim=1))
    later = m.query_embedding(states, timesteps + 5)
    assert not torch.allclose(later, query)  # time-aware


def test_modulation_pool_lora():
    m = model()
    states, actions, rtg, timesteps = batch()
    before = m(states, actions, rtg, timesteps)
    pool = ModulationPool(pool_size=4, key_dim=SMALL.d_model, rank=2, kind="lora")
    names = pool.attach(m)
    expected = [f"blocks.{i}.{layer}" for i in range(SMALL.n_layers) for layer in ("attn.q_proj", "attn.v_proj",
                                                                                  "ff.fc1")]
    assert names == expected  # L2M's placement: fc2 untouched
    query = m.query_embedding(states, timesteps)
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
    agent.reset(target_return=1500.0, action_dim=4, return_scale=200.0)
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


def test_load_takes_this_devices_optimizer_flags(tmp_path):
    """A checkpoint keeps the saver's AdamW flags (fused/capturable: True when saved on CUDA); ``load`` replaces
    them with the loading device's, so that a CPU-saved agent can train in CUDA graphs and vice versa. Here a
    CUDA-style file is loaded on the CPU: the optimizer ends with the CPU's flags and its moments are restored."""
    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(11, 5)), "actions": rng.uniform(-1, 1, (10, 2)),
                 "rewards": np.ones(10)} for _ in range(2)]
    agent = L2MAgent(SMALL, device="cpu", batch_size=4)
    agent.learn(episodes, steps=3)
    agent.save(tmp_path / "a.pt")
    saved = torch.load(tmp_path / "a.pt", weights_only=False)
    for group in saved["optimizer"]["param_groups"]:
        group["fused"] = group["capturable"] = True
    torch.save(saved, tmp_path / "cuda_style.pt")
    loaded = L2MAgent.load(tmp_path / "cuda_style.pt", device="cpu")
    assert [(g["fused"], g["capturable"]) for g in loaded.optimizer.param_groups] == [(False, False)] * 2
    moments = [loaded.optimizer.state[p]["exp_avg"] for p in loaded.model.parameters()]
    assert all(torch.equal(m, agent.optimizer.state[p]["exp_avg"]) for m, p in zip(moments, agent.model.parameters()))
    loaded.learn(episodes, steps=1)


def test_agent_learns_from_episode_dicts_and_validates():
    rng = np.random.default_rng(0)
    episode = {"observations": rng.normal(size=(11, 5)), "actions": rng.uniform(-1, 1, (10, 2)),
               "rewards": np.ones(10)}
    short = {"observations": rng.normal(size=(7, 3)), "actions": rng.uniform(-1, 1, (6, 1)),
             "rewards": np.arange(6.0)}
    agent = L2MAgent(SMALL, device="cpu", batch_size=4)
    data = agent.prepare_episodes([episode, short])
    assert data.lengths.tolist() == [10, 6] and len(data) == 2
    halved = agent.prepare_episodes([episode, short], return_scale=[1.0, 2.0])  # one scale per item
    assert halved.rtg[1, :6].tolist() == [7.5, 7.5, 7.0, 6.0, 4.5, 2.5] and torch.equal(halved.rtg[0], data.rtg[0])
    with pytest.raises(ValueError, match="one return scale per item"):
        agent.prepare_episodes([episode, short], return_scale=[1.0])
    assert data.states.shape == (2, 10, SMALL.state_dim) and data.actions.shape == (2, 10, SMALL.max_action_dim)
    assert data.rtg[0].tolist() == list(range(10, 0, -1))  # rtg per episode from rewards, in reward units
    assert data.rtg[1, :6].tolist() == [15.0, 15.0, 14.0, 12.0, 9.0, 5.0] and not data.rtg[1, 6:].any()
    np.testing.assert_array_equal(data.states[1, :6, :3].numpy(), short["observations"][:6].astype(np.float32))
    assert not data.states[1, :, 3:].any() and not data.states[1, 6:].any()  # zero padding
    assert data.action_mask.tolist() == [[True, True, False], [True, False, False]]
    agent.learn([episode], steps=2)
    with pytest.raises(ValueError, match="state_dim"):
        agent.learn([{**episode, "observations": rng.normal(size=(11, 8))}], steps=1)
    with pytest.raises(ValueError, match="context"):
        agent.learn([{k: v[:3] for k, v in episode.items()}], steps=1)


def test_sample_batch_windows_are_uniform_and_seeded():
    lengths = (12, 6)
    episodes = [{"observations": np.stack([np.arange(n + 1), np.full(n + 1, e)], 1).repeat(2, 1).astype(np.float32),
                 "actions": np.linspace(-1, 1, n * (2 - e)).reshape(n, 2 - e), "rewards": np.arange(n, dtype=float)}
                for e, n in enumerate(lengths)]
    agent = L2MAgent(SMALL, device="cpu", batch_size=4000, seed=1)
    states, actions, rtg, timesteps, mask = agent.sample_batch(agent.prepare_episodes(episodes))
    t = SMALL.context
    which, starts = states[:, 0, 2].long(), states[:, 0, 0].long()  # column 0: timestep, column 2: episode
    for e, n in enumerate(lengths):
        mine = starts[which == e]
        assert set(mine.tolist()) == set(range(n - t + 1))  # every window start, never past the end
        counts = torch.bincount(mine, minlength=n - t + 1).float()  # uniform start within the episode
        assert counts.min() > 0.6 * counts.mean()
        returns_to_go = torch.tensor(np.cumsum(episodes[e]["rewards"][::-1])[::-1].copy(), dtype=torch.float32)
        assert torch.equal(rtg[which == e], returns_to_go[timesteps[which == e]])
        expected = torch.as_tensor(episodes[e]["actions"], dtype=torch.float32)[timesteps[which == e]]
        assert torch.equal(actions[which == e][..., : 2 - e], expected) and not actions[which == e][..., 2 - e:].any()
        assert mask[which == e][..., : 2 - e].all() and not mask[which == e][..., 2 - e:].any()
    assert abs((which == 0).float().mean().item() - 0.5) < 0.05  # episode uniform, not window uniform (9/12)
    assert torch.equal(timesteps, starts[:, None] + torch.arange(t)) and torch.equal(states[..., 0].long(), timesteps)
    again = L2MAgent(SMALL, device="cpu", batch_size=4000, seed=1)
    assert torch.equal(again.sample_batch(again.prepare_episodes(episodes))[0], states)  # seeded


def greedy_by_hand(m, states, prev, rtg, timesteps, dim):
    """Independent greedy decoding of one context with forward_tokens: PAD for dims >= dim and the current step."""
    pad, width = SMALL.n_bins, SMALL.max_action_dim
    t = states.shape[0]
    tokens = torch.full((1, t, width), pad, dtype=torch.long)
    tokens[0, : t - 1, :dim] = discretize(prev[:, :dim])
    for k in range(dim):
        tokens[0, -1, k] = m.forward_tokens(states[None], tokens, rtg[None], timesteps[None])[0, -1, k].argmax()
    return bin_centers(tokens[0, -1, :dim])


def test_act_batch_equals_single_calls_and_hand_decoding():
    m = model(seed=3)
    g = torch.Generator().manual_seed(0)
    n, t, dims = 5, 3, [3, 2, 1, 3, 2]
    states, prev = torch.randn(n, t, 5, generator=g), torch.rand(n, t - 1, 3, generator=g) * 2 - 1
    rtg, timesteps = torch.rand(n, t, generator=g) * 20, torch.arange(t).repeat(n, 1) + torch.arange(n)[:, None]
    batched = m.act_batch(states, prev, rtg, timesteps, dims)
    assert batched.shape == (n, 3)
    for i, dim in enumerate(dims):
        single = m.act(states[i], prev[i, :, :dim], rtg[i], timesteps[i], action_dim=dim)
        assert torch.equal(batched[i, :dim], single)
        assert torch.equal(single, greedy_by_hand(m, states[i], prev[i], rtg[i], timesteps[i], dim))
        assert not batched[i, dim:].any()  # dims beyond the row's width: 0


def test_predict_batch_in_lockstep_matches_explicit_windows():
    """Each row acts on its own last ``context`` steps, its returns-to-go divided by its return scale."""
    agent = L2MAgent(SMALL, device="cpu", seed=2)
    rng = np.random.default_rng(0)
    n, steps, dims, targets, scales = 3, 7, [2, 3, 1], [20.0, 5.0, 12.0], [200.0, 100.0, 1.0]
    obs, rewards = rng.normal(size=(steps, n, 5)).astype(np.float32), rng.uniform(0, 3, (steps, n))
    batch = agent.new_episodes(targets, dims, scales)
    seen = []

    def select(states, timesteps, rows):
        seen.append((states.shape, timesteps.tolist(), rows.tolist()))
        return contextlib.nullcontext()

    taken, rtgs = [[] for _ in range(n)], [[t] for t in targets]
    for step in range(steps):
        rows = np.arange(n) if step < 5 else np.array([0, 2])  # row 1 stops after 5 steps
        if step:
            for r in rows:
                rtgs[r].append(rtgs[r][-1] - float(rewards[step - 1, r]))
        actions = agent.predict_batch(batch, obs[step, rows], rewards[step - 1, rows] if step else rewards[0, rows],
                                      rows=rows, select=select)
        first = max(0, step + 1 - SMALL.context)
        for a, r in zip(actions, rows):
            prev = np.array(taken[r][first:], np.float32).reshape(-1, dims[r])
            expected = agent.model.act(obs[first:step + 1, r], prev,
                                       np.array(rtgs[r][first:], np.float32) / np.float32(scales[r]),
                                       np.arange(first, step + 1), action_dim=dims[r]).numpy()
            np.testing.assert_array_equal(a[: dims[r]], expected)
            assert not a[dims[r]:].any()
            taken[r].append(a[: dims[r]])
        assert seen[-1] == ((len(rows), step + 1 - first, SMALL.state_dim),
                            [list(range(first, step + 1))] * len(rows), rows.tolist())
    np.testing.assert_allclose(batch.rtg_now, [rtgs[r][-1] for r in range(n)])  # reward units
    with pytest.raises(ValueError, match="lockstep"):
        agent.predict_batch(batch, obs[0], rewards[0])  # row 1 is behind


def test_predict_context():
    """predict keeps the last `context` steps: absolute timesteps, rtg minus the rewards received so far."""
    agent = L2MAgent(SMALL, device="cpu", seed=1)
    rng = np.random.default_rng(0)
    observations, rewards = rng.normal(size=(7, 5)).astype(np.float32), rng.uniform(0, 3, 7)
    agent.reset(target_return=20.0, action_dim=2)
    taken, rtgs = [], [20.0]
    for t in range(7):
        if t:
            rtgs.append(rtgs[-1] - float(rewards[t - 1]))
        action, _ = agent.predict(observations[t], reward=rewards[t - 1] if t else 5.0)  # first: ignored
        first = max(0, t + 1 - SMALL.context)
        expected = greedy_by_hand(agent.model, torch.as_tensor(observations[first:t + 1]),
                                  torch.as_tensor(np.array(taken[first:], np.float32).reshape(-1, 2)),
                                  torch.tensor(rtgs[first:], dtype=torch.float32), torch.arange(first, t + 1), 2)
        assert np.array_equal(action, expected.numpy()) and action.shape == (2,)
        taken.append(action)


def test_pool_oracle_per_sample_task_ids():
    pool = ModulationPool(pool_size=7, key_dim=4, top_k=2)
    idx = pool.select(torch.randn(4, 4), torch.tensor([0, 2, 3, 1]), oracle=True, evaluate=True)
    # task k -> entries (2k, 2k + 1) mod 7
    assert idx.tolist() == [[0, 1], [4, 5], [6, 0], [2, 3]]
    assert torch.equal(pool.select(torch.randn(2, 4), 3, oracle=True, evaluate=True), torch.tensor([[6, 0]] * 2))


def test_importing_agents_l2m_does_not_import_sb3():
    code = "import plasticrl.agents.l2m, sys; assert 'stable_baselines3' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_building_an_agent_leaves_the_global_rng_alone_and_is_seeded():
    state = torch.get_rng_state()
    a = L2MAgent(SMALL, device="cpu", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = L2MAgent(SMALL, device="cpu", seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = L2MAgent(SMALL, device="cpu", seed=6)
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def _episodes(n=3, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    return [{"observations": rng.normal(size=(steps + 1, 5)), "actions": rng.uniform(-1, 1, (steps, 2)),
             "rewards": np.ones(steps)} for _ in range(n)]


def test_learn_calls_back_at_the_chosen_steps():
    agent = L2MAgent(SMALL, device="cpu", batch_size=4)
    seen = []
    agent.learn(_episodes(), steps=7, callback=lambda step, loss: seen.append((step, loss)),
                callback_steps=lambda step: step % 3 == 0)
    assert [s for s, _ in seen] == [0, 3, 6] and all(isinstance(loss, float) for _, loss in seen)
    assert agent.num_steps == 7


def test_make_update_is_one_clipped_optimizer_step():
    """make_update's step (eager on the CPU) equals optimizer_step by hand on a twin agent; it returns every value
    of the loss function as one vector."""
    a, b = L2MAgent(SMALL, device="cpu", seed=1), L2MAgent(SMALL, device="cpu", seed=1)
    batch = a.sample_batch(a.prepare_episodes(_episodes()), 4)
    params_a, params_b = list(a.model.parameters()), list(b.model.parameters())
    opt_a, opt_b = a.make_optimizer(params_a, 1e-3, 0.0), b.make_optimizer(params_b, 1e-3, 0.0)
    update = a.make_update(lambda x: (a.model.loss(*x), a.model.loss(*x) * 2), opt_a, params_a)
    values = update(batch)
    loss = b.model.loss(*batch)
    b.optimizer_step(loss, opt_b, params_b)
    assert values.shape == (2,) and values[0].item() == pytest.approx(loss.item())
    assert values[1].item() == pytest.approx(2 * loss.item())
    assert all(torch.equal(p, q) for p, q in zip(params_a, params_b))


def test_save_and_load_keep_the_pool_and_extras(tmp_path):
    agent = L2MAgent(SMALL, device="cpu", seed=0)
    pool = ModulationPool(pool_size=3, key_dim=SMALL.d_model, rank=2, top_k=1)
    layers = agent.attach_pool(pool)
    with torch.no_grad():
        for name, p in pool.named_parameters():
            if name.endswith(".B"):
                p.add_(0.1)
    pool.task_counts += 1
    pool.end_task()
    agent.extras["note"] = {"tensor": torch.ones(2)}
    agent.save(tmp_path / "a.pt")
    saved = torch.load(tmp_path / "a.pt", weights_only=False)
    assert saved["model"].keys() == DecisionTransformer(SMALL).state_dict().keys()  # the backbone's own keys
    assert list(saved["pool"]["layers"]) == layers and saved["pool"]["layers"]["blocks.0.ff.fc1"] == "output"
    loaded = L2MAgent.load(tmp_path / "a.pt", device="cpu")
    assert loaded.pool is not None and torch.equal(loaded.pool.counts, pool.counts)
    assert torch.equal(loaded.extras["note"]["tensor"], torch.ones(2))
    states, actions, rtg, timesteps = batch(state_width=5, action_width=3)
    for x in (agent, loaded):
        x.model.eval()
    idx = torch.tensor([[1], [2]])
    with pool.selected(idx), loaded.pool.selected(idx):
        assert torch.equal(agent.model(states, actions, rtg, timesteps), loaded.model(states, actions, rtg, timesteps))


def test_checkpoints_of_another_dt_are_refused(tmp_path):
    """A checkpoint whose DT config has other keys (e.g. one saved with a single return_scale and no embed_ln) is
    refused with a message, not loaded into the wrong network."""
    agent = L2MAgent(SMALL, device="cpu")
    agent.save(tmp_path / "a.pt")
    saved = torch.load(tmp_path / "a.pt", weights_only=False)
    saved["config"]["return_scale"] = 1000.0
    with pytest.raises(ValueError, match="another Decision Transformer.*pre-train again"):
        L2MAgent.from_checkpoint(saved, device="cpu")
