"""DeepMind Control Suite tasks as gymnasium envs (pixels or flat state).

dm_control is imported lazily (inside functions) so that the MuJoCo OpenGL
backend can be chosen before dm_control reads `MUJOCO_GL` at import time.
"""

from __future__ import annotations

import os
from collections import deque
from types import ModuleType
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

OPTIONS = ("pixels", "size", "frame_stack", "action_repeat", "camera", "seed")
DEFAULT_CAMERA = {"quadruped": 2}  # every other domain uses camera 0

_GL_ERROR = (
    "No working MuJoCo OpenGL backend for pixel observations: tried MUJOCO_GL=egl "
    "and MUJOCO_GL=osmesa. Install `libegl1` (EGL, for GPUs and Mesa) or `libosmesa6` "
    "(OSMesa) via apt, or set MUJOCO_GL yourself."
)
GL_PACKAGES = {"egl": "libegl1", "osmesa": "libosmesa6"}  # the apt package each headless backend needs
_gl_backend: str | None = None  # backend chosen by setup_gl(), "" if none works
_gl_error = ""  # why none works
GL_OFF = ("off", "disable", "disabled", "false", "0")  # dm_control's names of no rendering: state envs only


class GLBackendError(RuntimeError):
    """No MuJoCo OpenGL backend can render here; the message names the system package to install."""


def _set_backend_error(backend: str) -> str:
    """Why ``MUJOCO_GL=backend`` (set by the user) can't be used, in one line naming the fix; "" if it can."""
    if backend in GL_PACKAGES:
        if _gl_context_works(backend):
            return ""
        other = "osmesa" if backend == "egl" else "egl"
        return (f"MUJOCO_GL={backend} is set but {backend} can't create an OpenGL context (its library is missing?): "
                f"install it (apt-get install {GL_PACKAGES[backend]}), or use MUJOCO_GL={other} (apt-get install "
                f"{GL_PACKAGES[other]}), or unset MUJOCO_GL to use the first that works")
    if backend.lower() in ("glfw", "on", "enable", "enabled", "true", "1"):  # dm_control's names of glfw
        return ""
    if backend.lower() in GL_OFF:
        return (f"MUJOCO_GL={backend} turns rendering off, and pixel observations need it: use MUJOCO_GL=egl "
                f"(apt-get install libegl1) or osmesa (libosmesa6), or unset MUJOCO_GL")
    return (f"MUJOCO_GL={backend} is not a MuJoCo OpenGL backend for pixel observations; use egl, osmesa or glfw "
            "(a display), or unset MUJOCO_GL to use the first that works")


def _gl_context_works(backend: str) -> bool:
    """Try to create (and free) a tiny OpenGL context with `backend`."""
    saved_platform = os.environ.get("PYOPENGL_PLATFORM")
    try:
        if backend == "egl":
            from mujoco.egl import GLContext
        else:
            from mujoco.osmesa import GLContext
        context = GLContext(8, 8)
        context.make_current()
        context.free()
        return True
    except Exception:  # noqa: BLE001 - missing library, no device, PyOpenGL platform clash, ...
        if saved_platform is None:  # mujoco.egl/osmesa set it on import
            os.environ.pop("PYOPENGL_PLATFORM", None)
        return False


def setup_gl(required: bool = True) -> str:
    """Choose the MuJoCo GL backend; must run before dm_control is imported.

    Keeps `MUJOCO_GL` if it is set and works; otherwise tries `egl`, then `osmesa`, and
    sets `MUJOCO_GL` to the first that can create a context. Returns the backend
    name ("" when none works); raises GLBackendError then if `required`, and always
    when the `MUJOCO_GL` set can't work (dm_control would fail at import) unless it
    turns rendering off (`GL_OFF`: state envs only).
    """
    global _gl_backend, _gl_error
    if _gl_backend is None:
        if os.environ.get("MUJOCO_GL"):
            _gl_error = _set_backend_error(os.environ["MUJOCO_GL"])
            _gl_backend = "" if _gl_error else os.environ["MUJOCO_GL"]
        else:
            _gl_backend, _gl_error = "", _GL_ERROR
            for backend in ("egl", "osmesa"):
                if _gl_context_works(backend):
                    os.environ["MUJOCO_GL"] = backend
                    _gl_backend, _gl_error = backend, ""
                    break
    chosen = os.environ.get("MUJOCO_GL", "")
    if not _gl_backend and (required or (chosen and chosen.lower() not in GL_OFF)):  # dm_control's import fails
        raise GLBackendError(_gl_error)
    return _gl_backend


def gl_problem() -> str:
    """Why pixel observations can't be rendered here (one line naming the system package), "" when they can."""
    try:
        setup_gl(required=True)
    except GLBackendError as exc:
        return str(exc)
    return ""


def _suite() -> ModuleType:
    """Import and return `dm_control.suite`, choosing the GL backend first."""
    setup_gl(required=False)
    from dm_control import suite

    return suite


def all_tasks() -> list[tuple[str, str]]:
    """All (domain, task) pairs of the installed dm_control suite."""
    return list(_suite().ALL_TASKS)


def _model_arrays(model: Any) -> dict[str, np.ndarray]:
    """A ``mujoco.MjModel``'s array fields (views into the model), but its texture pixels (``tex_data``, megabytes,
    uploaded to the renderer once and changed by no suite task)."""
    return {name: getattr(model, name) for name in dir(model)
            if not name.startswith("_") and name != "tex_data" and isinstance(getattr(model, name), np.ndarray)}


class DMCEnv(gym.Env):
    """One dm_control suite task.

    Observations: pixels -> uint8 (frame_stack*3, size, size), channel-first,
    frames oldest->newest; state -> float32 (D,), the dm_control observation
    dict flattened in its order. Actions: float32 in [-1, 1], rescaled linearly
    to the task's action bounds, repeated `action_repeat` physics (control)
    steps; reward is summed over them. Episodes end after dm_control's time
    limit (1000 control steps for the standard tasks) with truncated=True;
    terminated is always False. `info["frames"]` counts control steps since reset.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        domain: str,
        task: str,
        *,
        pixels: bool = True,
        size: int = 84,
        frame_stack: int = 3,
        action_repeat: int = 2,
        camera: int | None = None,
        seed: int | None = None,
    ) -> None:
        if size < 1 or frame_stack < 1 or action_repeat < 1:
            raise ValueError(
                f"size, frame_stack and action_repeat must be >= 1, got "
                f"{size}, {frame_stack}, {action_repeat}"
            )
        if pixels:
            setup_gl(required=True)
        self._env = _suite().load(domain, task, task_kwargs={"random": seed})
        self._task_id = f"{domain}-{task}"
        self._pixels = pixels
        self._size = size
        self._frame_stack = frame_stack
        self._action_repeat = action_repeat
        self.camera = DEFAULT_CAMERA.get(domain, 0) if camera is None else camera
        self.render_mode = "rgb_array"

        spec = self._env.action_spec()
        self._act_low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float64)
        self._act_high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        if pixels:
            shape = (3 * frame_stack, size, size)
            self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        else:
            dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self._stack: deque[np.ndarray] = deque(maxlen=frame_stack)
        self._frames = 0
        # the model as built, before any episode: tasks change model fields when an episode starts (reacher's and
        # fish-swim's target position, finger's target site, fish-upright's colours, finger-spin's damping)
        self._built_model = {k: v.copy() for k, v in _model_arrays(self._env.physics.model.ptr).items()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; a `seed` re-seeds dm_control's task RandomState."""
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)  # same state as RandomState(seed)
        time_step = self._env.reset()
        self._frames = 0
        return self._observe(time_step, first=True), {"frames": 0}

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply `action` (shape action_space.shape, in [-1, 1]) action_repeat times."""
        unit = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        scaled = self._act_low + (unit + 1.0) * 0.5 * (self._act_high - self._act_low)
        reward = 0.0
        for _ in range(self._action_repeat):
            time_step = self._env.step(scaled)
            self._frames += 1
            reward += float(time_step.reward or 0.0)
            if time_step.last():
                break
        obs = self._observe(time_step)
        return obs, reward, False, bool(time_step.last()), {"frames": self._frames}

    def get_state(self) -> dict[str, Any]:
        """Everything the rest of the episode depends on, so that ``set_state`` on another env of the same task
        continues it exactly: MuJoCo's integration state (``mj_getState`` with ``mjSTATE_INTEGRATION``: time,
        positions, velocities, actuator activations, controls, applied forces, mocap, solver warm start), the model
        fields the task changed when the episode started (against the model as built), the task's RandomState (the
        next episodes' initial states), dm_control's step count within the episode, the frame stack and the
        control-step count. numpy arrays and builtins only (picklable)."""
        import mujoco

        physics = self._env.physics
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        mj_state = np.empty(mujoco.mj_stateSize(physics.model.ptr, spec), np.float64)
        mujoco.mj_getState(physics.model.ptr, physics.data.ptr, mj_state, spec)
        changed = {k: v.copy() for k, v in _model_arrays(physics.model.ptr).items()
                   if not np.array_equal(v, self._built_model[k])}
        return {"task": self._task_id, "mujoco": mujoco.__version__, "pixels": self._pixels,
                "frame_stack": self._frame_stack, "mj_state": mj_state, "model": changed,
                "task_random": self._env.task.random.get_state(),
                "step_count": self._env._step_count, "reset_next_step": self._env._reset_next_step,
                "frames": self._frames, "stack": [f.copy() for f in self._stack]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues the episode that ``get_state`` saved (on an env built with the same task and options);
        ValueError naming the difference for a state of another task, observation kind or MuJoCo version."""
        import mujoco

        own = {"task": self._task_id, "mujoco": mujoco.__version__, "pixels": self._pixels,
               "frame_stack": self._frame_stack}
        other = {k: state.get(k) for k in own if state.get(k) != own[k]}
        if other:
            raise ValueError(f"the saved env state is of {other}, this env has "
                             f"{ {k: own[k] for k in other} }: continue with the env and MuJoCo it was saved with")
        physics = self._env.physics
        for name, field in _model_arrays(physics.model.ptr).items():  # this env's own episode changes undone,
            field[...] = state["model"].get(name, self._built_model[name])  # the saved ones made
        if "hfield_data" in state["model"] and physics.model.nhfield:  # terrain (quadruped-escape): to the renderer
            with physics.contexts.gl.make_current() as ctx:
                for i in range(physics.model.nhfield):
                    ctx.call(mujoco.mjr_uploadHField, physics.model.ptr, physics.contexts.mujoco.ptr, i)
        mujoco.mj_setState(physics.model.ptr, physics.data.ptr, np.asarray(state["mj_state"], np.float64),
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        physics.forward()  # derived quantities (positions of bodies, sensors) for observations and rendering
        self._env.task.random.set_state(state["task_random"])
        self._env._step_count = state["step_count"]
        self._env._reset_next_step = state["reset_next_step"]
        self._frames = state["frames"]
        self._stack.clear()
        self._stack.extend(f.copy() for f in state["stack"])

    @property
    def dm_env(self) -> Any:
        """The wrapped `dm_control.rl.control.Environment` (physics, task, specs)."""
        return self._env

    def render(self) -> np.ndarray:
        """Current camera image, uint8 (size, size, 3)."""
        return self._env.physics.render(self._size, self._size, camera_id=self.camera)

    def close(self) -> None:
        self._env.close()

    def _observe(self, time_step: Any, first: bool = False) -> np.ndarray:
        if not self._pixels:
            parts = [np.asarray(v, dtype=np.float32).ravel() for v in time_step.observation.values()]
            return np.concatenate(parts)
        frame = self.render().transpose(2, 0, 1).copy()
        if first:
            self._stack.extend([frame] * self._frame_stack)
        else:
            self._stack.append(frame)
        return np.concatenate(self._stack, axis=0)
