"""GPU-only checks (skipped without CUDA): the CUDA-graph update equals the eager update on the same batch and
random numbers; replay on the GPU; the monitor and the replay-ratio callback on a CUDA agent.

The module runs with the process-wide flags of a GPU run (``plasticrl.lab.runtime.configure_torch("cuda")``: cuDNN
autotuning, TF32 matmuls, dynamo's recompile limit raised so that every compiled agent compiles its optimizer
steps). The max-autotune compilations take minutes each: they are marked ``slow``, run apart:

    python -m pytest -q tests/gpu -m "not slow"
    python -m pytest -q tests/gpu -m slow
"""

import functools

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def flag_owners():
    """(object, attribute) of the process-wide flags configure_torch sets: cuDNN autotuning, TF32 matmuls, TF32
    convolutions, dynamo's recompile limit."""
    return ((torch.backends.cudnn, "benchmark"), (torch.backends.cuda.matmul, "allow_tf32"),
            (torch.backends.cudnn, "allow_tf32"), (torch._dynamo.config, "recompile_limit"))


def torch_flags():
    return tuple(getattr(owner, name) for owner, name in flag_owners())


@pytest.fixture(scope="module", autouse=True)
def gpu_run_flags():
    """configure_torch("cuda") for this module's tests, as the lab's entry points do; the flags are restored after."""
    from plasticrl.lab.runtime import configure_torch

    with pytest.MonkeyPatch.context() as mp:
        for owner, name in flag_owners():
            mp.setattr(owner, name, getattr(owner, name))  # restored on leaving the context
        configure_torch("cuda")
        yield


@functools.cache
def walker_env():
    """One walker-walk pixel VecEnv (84x84, 3 stacked frames) for all agents of the module: the tests read its spaces
    or step it from a reset (``learn``), never depend on its state."""
    from stable_baselines3.common.env_util import make_vec_env

    from plasticrl import envs

    return make_vec_env(lambda: envs.make("dmc:walker-walk", size=84), n_envs=1, seed=0)


def make_agent(cuda_graph, seed=0, **kw):
    from plasticrl.agents import DrQ

    return DrQ("CnnPolicy", walker_env(), buffer_size=2000, batch_size=64, seed=seed, device="cuda",
               cuda_graph=cuda_graph, **kw)


# no shift (pad 0), a fixed entropy coefficient of 0 and a policy std of e^-30: an update that uses no random numbers
DETERMINISTIC = {"augment_pad": 0, "ent_coef": 0.0, "policy_kwargs": {"log_std_bounds": (-30.0, -30.0)}}


def test_graphed_update_equals_eager_update():
    """Two agents with the same seed and init, one replaying CUDA graphs, one eager, three updates on the same
    batches: equal stats and parameters. The update is made deterministic so the RNG streams don't matter: no
    shift (pad 0), a fixed entropy coefficient of 0, and a policy std of e^-30 (actions = tanh(mean))."""
    from plasticrl.agents.accel import GraphedUpdate
    from plasticrl.lab.bench import synthetic_batch

    kw = {"augment_pad": 0, "ent_coef": 0.0, "policy_kwargs": {"log_std_bounds": (-30.0, -30.0)}}
    a, b = make_agent(True, **kw), make_agent(False, **kw)
    assert isinstance(a._update_fn, GraphedUpdate) and not isinstance(b._update_fn, GraphedUpdate)
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    batches = [synthetic_batch(64, shape, adim, torch.device("cuda"), s) for s in range(3)]
    for batch in batches:  # the first is the eager warm-up + capture, the others are graph replays
        torch.testing.assert_close(a._update_fn(batch), b._update_fn(batch), rtol=1e-5, atol=1e-6)
    assert a._update_fn.graph is not None
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_loaded_agent_recaptures_its_update_graph(tmp_path, monkeypatch):
    """set_parameters (which DrQ.load uses) replaces the optimizer states by new tensors: it invalidates the update
    graph, so that the next update re-captures and the graph steps the loaded states (a stale graph would keep
    stepping the old ones). After loading an eager agent's checkpoint, the graphed agent's next updates equal the
    eager agent's (deterministic update as above, true fp32)."""
    from plasticrl.lab.bench import synthetic_batch

    a, b = make_agent(True, **DETERMINISTIC), make_agent(False, **DETERMINISTIC)
    exact_fp32(monkeypatch)
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    batches = [synthetic_batch(64, shape, adim, torch.device("cuda"), s) for s in range(4)]
    a._update_fn(batches[0])
    a._update_fn(batches[1])  # captured, then replayed
    b._update_fn(batches[0])  # b's state differs from a's
    b.save(tmp_path / "eager.zip")
    a.set_parameters(str(tmp_path / "eager.zip"))
    assert a._update_fn.graph is None
    for batch in batches[2:]:  # re-capture (an eager warm-up update), then a replay
        torch.testing.assert_close(a._update_fn(batch), b._update_fn(batch), rtol=1e-5, atol=1e-6)
    assert a._update_fn.graph is not None
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    for opt_a, opt_b in ((a.actor.optimizer, b.actor.optimizer), (a.critic.optimizer, b.critic.optimizer)):
        for pa, pb in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
            torch.testing.assert_close(opt_a.state[pa]["exp_avg"], opt_b.state[pb]["exp_avg"], rtol=1e-4, atol=1e-7)


def test_building_a_cuda_drq_changes_no_process_wide_state(monkeypatch):
    """A DrQ built on CUDA with compilation and graphs on (seed=None) leaves cuDNN autotuning, both TF32 flags,
    dynamo's recompile limit and the global RNGs as they were. The flags are set here to values configure_torch
    would change, so that a constructor that set them would show."""
    for (owner, name), value in zip(flag_owners(), (False, False, False, 8)):
        monkeypatch.setattr(owner, name, value)
    flags, cpu_rng, cuda_rng = torch_flags(), torch.get_rng_state(), torch.cuda.get_rng_state()
    agent = make_agent(True, seed=None, compile_update=True)
    assert agent.compile_update is True and agent._update_fn.graph is None and agent.policy.act_graphs == {}
    assert torch_flags() == flags == (False, False, False, 8)
    assert torch.equal(torch.get_rng_state(), cpu_rng) and torch.equal(torch.cuda.get_rng_state(), cuda_rng)


def test_replay_and_monitor_on_gpu():
    from plasticrl.replay_ratio import StaticReplayRatio
    from plasticrl.sb3 import PlasticityCallback, ReplayRatioCallback

    model = make_agent("auto")
    model.learning_starts = 100
    model.train_freq = model.train_freq.__class__(1, model.train_freq.unit)
    assert model.replay_buffer.frames.device.type == "cuda"
    probe = PlasticityCallback(every=100, batch_size=64)
    model.learn(300, callback=[ReplayRatioCallback(StaticReplayRatio(0.5)), probe])
    assert model._n_updates == 100
    steps = [s for s, _ in probe.history]
    assert steps == [100, 200, 300]
    assert all(v == v for v in probe.history[-1][1].values())
    stats = model.pop_train_stats()
    assert set(stats) >= {"critic_loss", "actor_loss", "critic_fau"}
    assert model._step_graph is not None  # frames on the GPU: sampling + update replayed as one graph


def test_bf16_update_is_close_to_fp32():
    """precision="bf16" (convolutions, trunks and MLPs in bf16, fp32 weights and losses) gives the fp32 losses to
    bf16 accuracy on the same batch and init (deterministic update as above)."""
    from plasticrl.lab.bench import synthetic_batch

    kw = {"augment_pad": 0, "ent_coef": 0.0, "policy_kwargs": {"log_std_bounds": (-30.0, -30.0)}}
    a, b = make_agent(False, precision="fp32", **kw), make_agent(False, precision="bf16", **kw)
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    for s in range(3):
        batch = synthetic_batch(64, shape, adim, torch.device("cuda"), s)
        sa, sb = a.update(batch), b.update(batch)
        for key in ("critic_loss", "actor_loss", "q"):
            torch.testing.assert_close(sb[key], sa[key], rtol=5e-2, atol=5e-3, msg=key)


def test_graph_captured_sampling_reads_the_current_buffer():
    """FrameReplayBuffer.sample recorded in a CUDA graph keeps sampling uniformly over the intact transitions as
    the buffer grows: its counts live on the device."""
    import numpy as np
    from gymnasium import spaces

    from plasticrl.agents.drq.replay import FrameReplayBuffer

    obs_space = spaces.Box(0, 255, (3, 8, 8), np.uint8)
    buf = FrameReplayBuffer(1000, obs_space, spaces.Box(-1, 1, (1,)), device="cuda", n_step=1)
    frame = np.zeros((1, 3, 8, 8), np.uint8)

    def add(t):
        buf.add(frame, frame, np.zeros((1, 1)), np.array([float(t)]), np.array([False]), [{}])

    for t in range(100):
        add(t)
    static = buf.sample(4096).rewards  # warm-up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = buf.sample(4096).rewards
    graph.replay()
    first = static.clone()
    for t in range(100, 400):
        add(t)
    graph.replay()
    second = static.clone()
    assert first.min() >= 0 and first.max() <= 99 and first.max() >= 95
    assert second.min() >= 0 and second.max() <= 399 and second.max() >= 390
    assert abs(second.mean().item() - 199.5) < 10  # uniform over 0..399


def test_decision_transformer_bf16_loss_is_close_to_fp32():
    """L2MAgent(precision="bf16") runs the DT in bf16 autocast: same loss as fp32 to bf16 accuracy, fp32 logits."""
    import numpy as np

    from plasticrl.agents.l2m import DTConfig, L2MAgent

    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(31, 39)), "actions": rng.uniform(-1, 1, (30, 4)),
                 "rewards": rng.uniform(0, 1, 30)} for _ in range(8)]
    cfg = DTConfig(d_model=64, n_layers=2, n_heads=4, context=5, dropout=0.0)
    a = L2MAgent(cfg, device="cuda", batch_size=32, precision="fp32")
    b = L2MAgent(cfg, device="cuda", batch_size=32, precision="bf16")
    b.model.load_state_dict(a.model.state_dict())
    batch = a.sample_batch(a.prepare_episodes(episodes))
    assert b.model(*batch[:4], batch[4]).dtype == torch.float32
    torch.testing.assert_close(b.model.loss(*batch), a.model.loss(*batch), rtol=2e-2, atol=2e-2)


def exact_fp32(monkeypatch):
    """True fp32 on CUDA for an equality check: this module's flags (configure_torch) turn TF32 matmuls on and cuDNN
    convolutions use TF32 by default (10-bit mantissa); with them two paths of the same update differed by up to
    2e-3 relative in their losses and failed the parameter bounds below (H100, 2026-11-25)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def assert_same_updates(a, b, steps=3, per_tensor=0.25, total=0.05, rtol=3e-3, atol=1e-4):
    """``a`` and ``b`` run ``steps`` updates on the same batches: close stats, and close parameter changes (Adam
    steps of ~1e-4 each, not the parameters, are compared): all changes together within ``total`` (relative
    norm) of ``b``'s, each tensor's within ``per_tensor`` (Adam divides by the gradients' RMS, so rounding
    differences in tiny gradients move small tensors most)."""
    from plasticrl.lab.bench import synthetic_batch

    before = [p.detach().clone() for p in b.policy.parameters()]
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    for s in range(steps):
        batch = synthetic_batch(64, shape, adim, torch.device("cuda"), s)
        torch.testing.assert_close(a._update_fn(batch), b._update_fn(batch), rtol=rtol, atol=atol)
    changes = []
    for (name, pa), pb, p0 in zip(a.policy.named_parameters(), b.policy.parameters(), before):
        da, db = pa.detach() - p0, pb.detach() - p0
        assert (da - db).norm() <= per_tensor * db.norm() + 1e-7, name
        changes.append((da.flatten(), db.flatten()))
    da, db = torch.cat([c[0] for c in changes]), torch.cat([c[1] for c in changes])
    assert (da - db).norm() <= total * db.norm()


@pytest.mark.parametrize("mode", [True, pytest.param("max-autotune-no-cudagraphs", marks=pytest.mark.slow)])
def test_compiled_update_equals_eager_update(mode, monkeypatch):
    """compile_update (torch.compile of DrQ.update, inside the CUDA graph; Inductor's default, and max-autotune,
    whose Triton GEMM/conv kernels replace cuBLAS/cuDNN where faster) gives the eager update's stats and parameter
    changes on the same batches (deterministic update as above), in fp32: the kernels only reorder sums."""
    a, b = make_agent(True, compile_update=mode, **DETERMINISTIC), make_agent(False, **DETERMINISTIC)
    exact_fp32(monkeypatch)
    assert_same_updates(a, b)


@pytest.mark.slow
def test_fast_path_update_equals_eager_bf16_update():
    """The update the README's fast path runs (bf16, max-autotune compilation, fused Q heads, CUDA graph) against
    the eager bf16 update with the two MLPs, same batches, deterministic update: to bf16 accuracy (the bounds of
    the fused bf16 test)."""
    a = make_agent(True, compile_update="max-autotune-no-cudagraphs", fused_q_heads=True, precision="bf16",
                   **DETERMINISTIC)
    b = make_agent(False, precision="bf16", **DETERMINISTIC)
    assert_same_updates(a, b, per_tensor=1.0, total=0.25, rtol=3e-2, atol=3e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_heads_update_in_graph_equals_eager_update(precision, monkeypatch):
    """fused_q_heads=True (both Q heads as batched matmuls) inside the update's CUDA graph vs the two MLPs in the
    eager update, same batches, deterministic update: fp32 as the compiled update above; bf16 to bf16 accuracy
    (stats within 3 %, parameter changes within 25 % together)."""
    a = make_agent(True, fused_q_heads=True, precision=precision, **DETERMINISTIC)
    b = make_agent(False, precision=precision, **DETERMINISTIC)
    if precision == "fp32":
        exact_fp32(monkeypatch)
        assert_same_updates(a, b)
    else:
        assert_same_updates(a, b, per_tensor=1.0, total=0.25, rtol=3e-2, atol=3e-3)


def _dt_episodes(n=8, steps=30, state_dim=39, action_dim=4):
    import numpy as np

    rng = np.random.default_rng(0)
    return [{"observations": rng.normal(size=(steps + 1, state_dim)),
             "actions": rng.uniform(-1, 1, (steps, action_dim)), "rewards": rng.uniform(0, 1, steps)}
            for _ in range(n)]


def test_decision_transformer_graphed_train_step_equals_eager():
    """L2MAgent(cuda_graph=True) replays one CUDA graph per train_step: same losses and parameters as eager steps
    on the same batches (dropout 0, fp32), and a new batch shape gets its own graph."""
    from plasticrl.agents.l2m import DTConfig, L2MAgent

    cfg = DTConfig(d_model=64, n_layers=2, n_heads=4, context=5, dropout=0.0)
    a = L2MAgent(cfg, device="cuda", batch_size=32, cuda_graph=True)
    b = L2MAgent(cfg, device="cuda", batch_size=32, cuda_graph=False)
    b.model.load_state_dict(a.model.state_dict())
    data = a.prepare_episodes(_dt_episodes())
    for size in (32, 32, 32, 16, 16):
        batch = a.sample_batch(data, size)
        torch.testing.assert_close(a.train_step(batch), b.train_step(batch), rtol=1e-5, atol=1e-6)
    assert a.uses_graphs and not b.uses_graphs and len(a._graphs) == 2 and a.num_steps == b.num_steps == 5
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def continual_data(tmp_path_factory):
    """One data folder for the continual runs: the smoke config's demonstrations, collected by the first run, do
    not depend on the method or the device."""
    return tmp_path_factory.mktemp("continual_data")


@pytest.mark.parametrize("method", ["l2m", "l2m_oracle", "ewc"])
def test_continual_run_with_graphs_equals_eager_run(method, tmp_path, continual_data):
    """The smoke sequence on CUDA with model.cuda_graph on and off: batches come from the same generator and the
    smoke DT has no dropout, so the graphed steps (pool selection and usage counts, EWC penalty inside the graph)
    must end with the eager run's weights, pool and success matrix."""
    import json

    from plasticrl.lab import continual
    from plasticrl.lab.config import continual as cc

    finals = []
    for graph in (True, False):
        cfg = cc.load("configs/continual/l2m_smoke.yaml",
                      [f"data.out_dir={continual_data}", "logging.wandb.mode=disabled", "run.device=cuda",
                       f"sequence.method={method}", "sequence.ewc_lambda=10.0", f"model.cuda_graph={graph}"])
        finals.append(continual.run_sequence(cfg, tmp_path / f"runs{graph}"))
    g, e = finals
    # final.pt is an L2MAgent.save file: the DT's weights under "model", the pool's state under "pool"
    fg, fe = (torch.load(run / "checkpoints" / "final.pt", weights_only=False) for run in (g, e))
    parts = [("model", fg["model"], fe["model"])]
    if method.startswith("l2m"):
        parts.append(("pool", fg["pool"]["state"], fe["pool"]["state"]))
    for name, sg, se in parts:
        for key in se:
            torch.testing.assert_close(sg[key], se[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
    if method == "l2m":
        assert fg["pool"]["state"]["counts"].sum() > 0
    assert (json.loads((g / "success_matrix.json").read_text())["perf"]
            == json.loads((e / "success_matrix.json").read_text())["perf"])


def test_gpu_replay_adds_equal_cpu_replay_adds():
    """Adds go to GPU storage through one packed pinned block per vector step (non-blocking); after the same adds
    (with episode ends and truncations) every stored array equals that of a CPU-storage buffer."""
    import numpy as np
    from gymnasium import spaces

    from plasticrl.agents.drq.replay import FrameReplayBuffer

    obs_space = spaces.Box(0, 255, (9, 8, 8), np.uint8)
    act_space = spaces.Box(-1, 1, (3,), np.float32)
    bufs = [FrameReplayBuffer(64, obs_space, act_space, device="cuda", n_envs=2, n_step=3, buffer_device=where)
            for where in ("cuda", "cpu")]
    assert bufs[0].storage.type == "cuda" and bufs[1].storage.type == "cpu"
    rng = np.random.default_rng(0)
    for step in range(50):
        obs = rng.integers(0, 256, (2, 9, 8, 8), dtype=np.uint8)
        nxt = rng.integers(0, 256, (2, 9, 8, 8), dtype=np.uint8)
        act, rew = rng.uniform(-1, 1, (2, 3)), rng.normal(size=2)
        done = np.array([step % 7 == 6, step % 11 == 10])
        infos = [{"TimeLimit.truncated": bool(step % 14 == 13)}, {}]
        for b in bufs:
            b.add(obs, nxt, act, rew, done, infos)
    torch.cuda.synchronize()
    for name in ("frames", "prev", "obs_slot", "next_slot", "actions", "rewards", "terminated", "episode_end",
                 "bounds"):
        torch.testing.assert_close(getattr(bufs[0], name).cpu(), getattr(bufs[1], name), msg=name)


def test_acting_graph_equals_eager_policy():
    """DrQ on CUDA acts through one CUDA graph per (batch shape, deterministic): deterministic actions equal the
    eager policy's, after the weights change too (the graph reads the current weights); stochastic actions get
    fresh noise on every replay."""
    import numpy as np

    agent = make_agent("auto")
    policy = agent.policy
    assert policy.act_graphs == {}
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (4, *agent.observation_space.shape), dtype=np.uint8)
    x = torch.as_tensor(obs, device="cuda")
    for _ in range(2):
        graphed, _ = agent.predict(obs, deterministic=True)
        with torch.no_grad():
            eager = policy._act(x, True).cpu().numpy()
        np.testing.assert_allclose(graphed, policy.unscale_action(eager), rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # change the weights in place: the next replay must see them
            for p in policy.actor.parameters():
                p.add_(0.01 * torch.randn_like(p))
    assert (tuple(x.shape), True) in policy.act_graphs
    a1, _ = agent.predict(obs, deterministic=False)
    a2, _ = agent.predict(obs, deterministic=False)
    assert not np.allclose(a1, a2) and np.all(np.abs(a1) <= 1.0)
    assert len(policy.act_graphs) == 2


def test_queued_action_on_cuda_is_read_before_the_updates_run():
    """On CUDA, DrQ._queue_action puts the acting graph ahead of the updates in the stream and its read-back waits
    for the actions only: equal to SB3's _sample_action for the same noise draws, although the updates queued
    after it change the weights before it is read."""
    import numpy as np
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    agent = make_agent("auto", learning_starts=10, async_env_step=True)
    agent.learn(30)
    torch.manual_seed(3)
    expected = OffPolicyAlgorithm._sample_action(agent, agent.learning_starts, None, agent.n_envs)
    torch.manual_seed(3)
    _, finish = agent._queue_action()
    agent.train(gradient_steps=5, batch_size=16)  # updates queued behind the action (and then a new prefetch)
    agent._prefetched = None
    action, buffer_action = finish()
    np.testing.assert_allclose(action, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(buffer_action, expected[1], rtol=1e-5, atol=1e-6)


def _intervene(model, intervention, batch, seed):
    """``intervention`` on the critic of ``model`` as ``plasticrl.sb3.InterventionCallback`` applies it (every
    optimizer, the target critic, the probe forward on ``batch``), its fresh weights drawn after ``seed``."""
    from plasticrl.interventions.base import Target
    from plasticrl.sb3 import optimizers_of, probe_forward, resolve_groups, target_pairs_of

    target = Target(resolve_groups(model, ["critic"])["critic"], optimizers_of(model), target_pairs_of(model))
    torch.manual_seed(seed)
    outcome = intervention.apply(target, probe_forward(model, batch))
    if outcome.rebuilt:
        model.invalidate_graphs()
    return outcome


@pytest.mark.parametrize("kind", ["reset", "shrink_perturb", "redo", "inject"])
def test_update_after_an_intervention_in_graph_equals_eager_update(kind, monkeypatch):
    """Two agents, one replaying its update as a CUDA graph, one eager, same seed, updates and batches; the same
    intervention on both critics (same fresh draws); then more updates: equal stats, parameters and Adam moments.
    Reset, shrink & perturb and ReDo write in place, so the graph captured before them is replayed as it is (not
    re-captured) and must see the new weights and zeroed moments; injection rebuilds the heads and the graph is
    captured anew (invalidate_graphs)."""
    from plasticrl import interventions as iv
    from plasticrl.lab.bench import synthetic_batch

    a, b = make_agent(True, **DETERMINISTIC), make_agent(False, **DETERMINISTIC)
    exact_fp32(monkeypatch)
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    batches = [synthetic_batch(64, shape, adim, torch.device("cuda"), s) for s in range(5)]
    for batch in batches[:2]:
        a._update_fn(batch), b._update_fn(batch)
    graph = a._update_fn.graph
    make = {"reset": lambda: iv.Reset(layers="last2"), "shrink_perturb": lambda: iv.ShrinkPerturb(alpha=0.5),
            "redo": lambda: iv.ReDo(tau=0.5), "inject": lambda: iv.Inject(heads=["q1", "q2"])}[kind]
    before = [p.detach().clone() for p in a.critic.parameters()]
    out_a, out_b = _intervene(a, make(), batches[2], 7), _intervene(b, make(), batches[2], 7)
    assert out_a.log == out_b.log
    if kind != "inject":
        assert any(not torch.equal(p, q) for p, q in zip(a.critic.parameters(), before)), "nothing changed"
    for batch in batches[2:]:
        torch.testing.assert_close(a._update_fn(batch), b._update_fn(batch), rtol=1e-5, atol=1e-6)
    assert (a._update_fn.graph is graph) == (kind != "inject")
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    for opt_a, opt_b in ((a.actor.optimizer, b.actor.optimizer), (a.critic.optimizer, b.critic.optimizer)):
        for group_a, group_b in zip(opt_a.param_groups, opt_b.param_groups):
            for pa, pb in zip(group_a["params"], group_b["params"]):
                if pa in opt_a.state:
                    torch.testing.assert_close(opt_a.state[pa]["exp_avg"], opt_b.state[pb]["exp_avg"], rtol=1e-4,
                                               atol=1e-7)


def test_drqv2_graphed_update_equals_eager_update(monkeypatch):
    """DrQV2 with its update replayed as a CUDA graph against the eager update, same seed, batches and scheduled std
    (written in place into the policy's ``actor_std`` between updates, which the graph reads): equal stats and
    parameters. Noise-free (std 0, no shift), so the RNG streams don't matter."""
    from stable_baselines3.common.env_util import make_vec_env

    from plasticrl import envs
    from plasticrl.agents import DrQV2
    from plasticrl.agents.accel import GraphedUpdate
    from plasticrl.lab.bench import synthetic_batch

    env = make_vec_env(lambda: envs.make("dmc:walker-walk", size=84), n_envs=1, seed=0)
    a, b = (DrQV2("CnnPolicy", env, buffer_size=2000, batch_size=64, seed=0, device="cuda", cuda_graph=graph,
                  std_schedule=0.0, augment_pad=0) for graph in (True, False))
    assert isinstance(a._update_fn, GraphedUpdate) and not isinstance(b._update_fn, GraphedUpdate)
    exact_fp32(monkeypatch)
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    for s in range(4):
        batch = synthetic_batch(64, shape, adim, torch.device("cuda"), s)
        torch.testing.assert_close(a._update_fn(batch), b._update_fn(batch), rtol=1e-5, atol=1e-6)
    assert a._update_fn.graph is not None
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    env.close()


def test_drqv2_acting_graph_reads_the_scheduled_std_in_place():
    """DrQV2's acting graph (one per batch shape) reads ``policy.actor_std`` where it lives: with std 0 a sampled
    action is the deterministic one; after the std is written in place (as ``set_actor_std`` does), the same graph,
    not captured again, adds noise of that std (empirical std of action - tanh(mu) over 512 x A entries within 10 %)."""
    from stable_baselines3.common.env_util import make_vec_env

    from plasticrl import envs
    from plasticrl.agents import DrQV2

    env = make_vec_env(lambda: envs.make("dmc:walker-walk", size=84), n_envs=1, seed=0)
    model = DrQV2("CnnPolicy", env, buffer_size=1000, seed=0, device="cuda", std_schedule=0.0)
    obs = torch.as_tensor(env.reset(), device="cuda").repeat(512, 1, 1, 1)
    policy = model.policy
    with torch.no_grad():
        mean = policy._predict(obs, deterministic=True)
        policy.actor_std.fill_(0.0)
        torch.testing.assert_close(policy._predict(obs, deterministic=False), mean)
        graph = policy.act_graphs[(tuple(obs.shape), False)].graph
        policy.actor_std.fill_(0.3)
        noisy = policy._predict(obs, deterministic=False)
    assert policy.act_graphs[(tuple(obs.shape), False)].graph is graph
    inside = (noisy.abs() < 0.999) & (mean.abs() < 0.5)  # away from the clamp at +-1
    assert float((noisy - mean)[inside].std()) == pytest.approx(0.3, rel=0.1)
    env.close()
