"""Diagnoses graph-vs-eager differences of the DrQ update on CUDA: prints both stats vectors and the parameters that
differ most after one update on the same batch and state (deterministic update: pad 0, alpha 0, std e^-30)."""

import torch

from plasticrl.lab.bench import synthetic_batch
from plasticrl.lab.runtime import configure_torch
from tests.gpu.test_cuda import make_agent

configure_torch("cuda")  # the flags of a GPU run, as the tests' module fixture sets them
kw = {"augment_pad": 0, "ent_coef": 0.0, "policy_kwargs": {"log_std_bounds": (-30.0, -30.0)}}
a, b = make_agent(True, **kw), make_agent(False, **kw)
shape, adim = a.observation_space.shape, a.action_space.shape[0]
batches = [synthetic_batch(64, shape, adim, torch.device("cuda"), s) for s in range(3)]
a_stats = [a._update_fn(batches[i]).tolist() for i in range(2)]
print("a", a_stats)
b.policy.load_state_dict(a.policy.state_dict())
b.actor.optimizer.load_state_dict(a.actor.optimizer.state_dict())
b.critic.optimizer.load_state_dict(a.critic.optimizer.state_dict())
print("graph", a._update_fn(batches[2]).tolist())
print("eager", b._update_fn(batches[2]).tolist())
diffs = sorted(((pa - pb).abs().max().item(), n)
               for (n, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()))
print(diffs[-8:])

c = make_agent(False, **kw)  # same seed and init as a: three eager updates on the same batches
print("c (eager from scratch)", [c._update_fn(bt).tolist() for bt in batches])
