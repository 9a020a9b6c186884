"""Scripted Atari experts that read emulator RAM and look ahead over cloned emulator states.

Every expert acts through `env.unwrapped.ale` (the env must come from `tasks.make_env`, minimal action
set, frameskip 4) and returns {'action': index into the minimal action set}. RAM addresses are the
AtariARI annotations (STACK_NOTES.md). Look-aheads call `ale.act` frame by frame on a cloned state
and restore it, so the real episode never sees them; under sticky actions the look-ahead is noisy,
which is what the experts face at evaluation too.

Costs (measured on one loaded CPU core): Pong ~2-3 ms/step, Boxing ~10 ms/step, Breakout and Freeway
well under 1 ms/step on top of the emulator.
"""
from __future__ import annotations

from collections.abc import Mapping

import gymnasium
import numpy as np

from data_pipelines.experts import Action

FRAMESKIP = 4  # ALE v5 frames per agent step; look-aheads step the emulator frame by frame.


def _ale(env: gymnasium.Env):
    return env.unwrapped.ale


def _step_frames(ale, action, steps: int = 1) -> float:
    """Plays `steps` agent steps of one emulator action inside a look-ahead; returns the reward."""
    reward = 0.0
    for _ in range(steps * FRAMESKIP):
        reward += ale.act(action)
    return reward


def _as_action(index: int) -> Action:
    return {"action": np.int32(index)}


# ---------------------------------------------------------------------------------------------------------
# Pong: plan each volley on cloned states.

PONG_NOOP, PONG_UP, PONG_DOWN = 0, 2, 3  # Minimal set: NOOP FIRE RIGHT(up) LEFT(down) RIGHTFIRE LEFTFIRE.
PONG_TOP, PONG_BOTTOM = 38, 203  # Player paddle RAM y range.
PONG_PLANE = 188  # Ball x at which the player's paddle meets it.
PONG_BANDS = (-14, 1)  # Paddle-minus-ball y at contact that return the ball at the steepest angle.
PONG_WANDER_X = 120  # Wander only while the ball is still near us going away: time to settle after.
PONG_SHAPES = tuple((d, k, j) for d in (PONG_UP, PONG_DOWN) for k in range(1, 6) for j in (0, 1))


def _pong_ram(ale) -> tuple[int, int, int]:
    """(ball x, ball y, player paddle y); ball y is 0 while no ball is in play."""
    ram = ale.getRAM()
    return int(ram[49]), int(ram[54]), int(ram[51])


class PongExpert:
    """Plans each volley: where and when to meet the ball so it leaves at the steepest angle.

    Reacting to the ball is weak in Pong: the paddle has inertia and, at frameskip 4, settles only on a
    ~23-pixel lattice. What wins is meeting the ball on the paddle's edge band (steep return the CPU
    cannot reach), which needs the paddle to be *moving* through the right spot on the contact frame.
    Per volley: (1) one look-ahead with the paddle idle gives the contact frame and the ball's y there;
    (2) a table of per-frame paddle displacements for press shapes (recorded once from rest) ranks
    "wait w steps, press k steps, maybe tap back" plans by predicted contact offset; (3) the best few
    are checked on cloned states up to the point's outcome and the best is executed. When the paddle
    strays from the plan (sticky actions), it replans. Just after its own hit it wanders at random with
    probability `wander`: varied recordings without sticky actions at little cost in points (random
    actions mid-volley would wreck plans; the paddle has settled again by the next volley).
    """

    name = "pong_lookahead"

    def __init__(self, verify: int = 6, wander: float = 0.1):
        self.verify = verify  # Plans checked on cloned states per volley.
        self.wander = wander
        self._disp: dict | None = None  # (direction, presses, taps back) -> per-frame displacement.

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._rng = rng
        self._prev = None
        self._queue: list[int] = []
        self._expect: list[int] = []
        self._expect_next = None
        self._rest = 0
        self._planned = False

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        ale = _ale(env)
        acts = ale.getMinimalActionSet()
        bx, by, py = _pong_ram(ale)
        self._rest = self._rest + 1 if self._prev is not None and py == self._prev[2] else 0
        approaching = self._prev is not None and bx > self._prev[0] and by != 0
        self._prev = (bx, by, py)
        if self._disp is None and self._rest >= 3:
            self._disp = self._displacements(ale, acts)
        if not approaching:  # Ball going away: recentre (or wander), forget the plan.
            self._queue, self._expect, self._expect_next, self._planned = [], [], None, False
            if bx > PONG_WANDER_X and self._rng.random() < self.wander:
                return _as_action(int(self._rng.choice((PONG_NOOP, PONG_UP, PONG_DOWN))))
            return _as_action(PONG_DOWN if py < 80 else PONG_UP if py > 160 else PONG_NOOP)
        strayed = self._expect_next is not None and py != self._expect_next
        if bx < PONG_PLANE - 4 and (not self._planned or strayed):
            self._planned = self._plan(ale, acts, py)
        action = self._queue.pop(0) if self._queue else PONG_NOOP
        self._expect_next = self._expect.pop(0) if self._expect else None
        return _as_action(action)

    @staticmethod
    def _shape(wait: int, direction: int, presses: int, taps: int) -> list[int]:
        back = PONG_DOWN if direction == PONG_UP else PONG_UP
        return [PONG_NOOP] * wait + [direction] * presses + [back] * taps

    def _displacements(self, ale, acts) -> dict:
        """Per-frame paddle displacement of each press shape, from rest (the ball does not affect it)."""
        state, y0, table = ale.cloneState(), _pong_ram(ale)[2], {}
        for shape in PONG_SHAPES:
            traj = []
            for a in self._shape(0, *shape) + [PONG_NOOP] * 12:
                for _ in range(FRAMESKIP):
                    ale.act(acts[a])
                    traj.append(_pong_ram(ale)[2] - y0)
            table[shape] = traj
            ale.restoreState(state)
        return table

    def _ball_contact(self, ale, acts) -> tuple[int, int] | None:
        """(frames until the ball reaches the paddle plane, ball y then), with the paddle idle."""
        state, out = ale.cloneState(), None
        for frame in range(160):
            ale.act(acts[PONG_NOOP])
            bx, by, _ = _pong_ram(ale)
            if by == 0:
                break
            if bx >= PONG_PLANE:
                out = (frame, by)
                break
        ale.restoreState(state)
        return out

    def _ranked(self, y0: int, frame: int, ball_y: int) -> list[list[int]]:
        """Plans sorted by how close their predicted contact offset is to a steep-return band."""
        scored = []
        for shape, traj in self._disp.items():
            for wait in range(frame // FRAMESKIP + 1):
                i = frame - FRAMESKIP * wait
                y = min(max(y0 + traj[min(i, len(traj) - 1)], PONG_TOP), PONG_BOTTOM)
                err = min(abs(y - ball_y - b) for b in PONG_BANDS)
                scored.append((err, wait, shape))
        scored.sort()
        return [self._shape(w, *s) for _, w, s in scored[: self.verify]]

    def _outcome(self, ale, acts, plan: list[int]) -> tuple[float, list[int]]:
        """Plays a plan on a cloned state: 99 for a point won, -1 for a miss, else the return's |vy|.

        Also returns the paddle y after each step, to notice when the real game leaves the plan.
        """
        state, ys, score = ale.cloneState(), [], -1.0
        prev_bx, hit, after = None, False, []  # Ball y on the 5 frames after the paddle reverses it.
        for t in range(80):
            reward = 0.0
            for _ in range(FRAMESKIP):
                reward += ale.act(acts[plan[t] if t < len(plan) else PONG_NOOP])
                bx, by, py = _pong_ram(ale)
                if hit and len(after) < 5:
                    after.append(by)
                hit = hit or (prev_bx is not None and bx < prev_bx and prev_bx > 150)
                prev_bx = bx
            ys.append(py)
            if reward:
                score = 99.0 if reward > 0 else -1.0
                break
            if len(after) == 5:
                score = float(abs(after[4] - after[0]))
                if score < 8:  # A shallow return: the rally goes on; no need to play it out.
                    break
        ale.restoreState(state)
        return score, ys

    def _plan(self, ale, acts, py: int) -> bool:
        """Chooses this volley's plan; False when nothing found returns the ball (retry next step)."""
        contact = self._ball_contact(ale, acts)
        if contact is None:
            return False
        if self._disp is not None and self._rest >= 2:
            plans = self._ranked(py, *contact)
        else:  # Paddle moving: the from-rest table does not apply; try moving now.
            plans = [self._shape(0, d, k, 0) for d, k, j in PONG_SHAPES if j == 0] + [[]]
        best = (-2.0, [], [])
        for plan in plans:
            score, ys = self._outcome(ale, acts, plan)
            if score > best[0]:
                best = (score, plan, ys)
            if score >= 99:
                break
        if best[0] < 0:
            for d, k, _ in PONG_SHAPES[::2]:
                plan = self._shape(0, d, k, 0)
                score, ys = self._outcome(ale, acts, plan)
                if score > best[0]:
                    best = (score, plan, ys)
                if score >= 4:
                    break
        self._queue, self._expect = list(best[1]), list(best[2])
        return best[0] >= 0


# ---------------------------------------------------------------------------------------------------------
# Breakout: meet the ball where it will land.

BREAKOUT_NOOP, BREAKOUT_FIRE, BREAKOUT_RIGHT, BREAKOUT_LEFT = 0, 1, 2, 3
BREAKOUT_PADDLE_Y = 176  # Ball RAM y at which the paddle meets it.
BREAKOUT_OFFSET = -8  # Paddle RAM x minus ball x that hits the paddle's middle.


class BreakoutExpert:
    """FIRE to serve; while the ball falls, move under the x where a look-ahead says it lands."""

    name = "breakout_tracker"

    def __init__(self, dead_zone: int = 3):
        self.dead_zone = dead_zone

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._prev_y = None
        self._landing = None

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        ale = _ale(env)
        ram = ale.getRAM()
        bx, by, px = int(ram[99]), int(ram[101]), int(ram[72])
        if by == 0:  # No ball in play.
            self._prev_y, self._landing = None, None
            return _as_action(BREAKOUT_FIRE)
        falling = self._prev_y is not None and by > self._prev_y
        self._prev_y = by
        if not falling:
            self._landing = None
        elif self._landing is None:
            self._landing = self._landing_x(ale)
        target = (self._landing if self._landing is not None else bx) + BREAKOUT_OFFSET
        if px < target - self.dead_zone:
            return _as_action(BREAKOUT_RIGHT)
        return _as_action(BREAKOUT_LEFT if px > target + self.dead_zone else BREAKOUT_NOOP)

    @staticmethod
    def _landing_x(ale) -> int | None:
        state, noop, out = ale.cloneState(), ale.getMinimalActionSet()[BREAKOUT_NOOP], None
        for _ in range(400):
            ram = ale.getRAM()
            if int(ram[101]) >= BREAKOUT_PADDLE_Y or int(ram[101]) == 0:
                out = int(ram[99])
                break
            ale.act(noop)
        ale.restoreState(state)
        return out


# ---------------------------------------------------------------------------------------------------------
# Boxing: short look-ahead over held actions.

# Every minimal-set action, punches first: the search stops at the first one that lands a punch.
BOXING_CANDIDATES = (1, *range(10, 18), *range(2, 10), 0)


class BoxingExpert:
    """Every `every` steps, holds each action for `horizon` steps on a cloned state; keeps the best.

    The score is punches landed minus taken, with a small pull towards punching range (24 pixels to
    the side, level with the opponent) to break ties; the first action that lands a clean punch is
    taken without trying the rest (halves the cost). Reactive approach-and-punch loses to the CPU
    boxer, which counters; the look-ahead usually wins by knockout (100 points).
    """

    name = "boxing_lookahead"

    def __init__(self, every: int = 4, horizon: int = 4):
        self.every, self.horizon = every, horizon

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._t, self._action = 0, 0

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        if self._t % self.every == 0:
            self._action = self._search(_ale(env))
        self._t += 1
        return _as_action(self._action)

    def _search(self, ale) -> int:
        state, acts, best = ale.cloneState(), ale.getMinimalActionSet(), (-np.inf, 0)
        for index in BOXING_CANDIDATES:
            value = _step_frames(ale, acts[index], self.horizon)
            ram = ale.getRAM()
            dx, dy = int(ram[33]) - int(ram[32]), int(ram[35]) - int(ram[34])
            value -= 0.01 * (abs(dy) + abs(abs(dx) - 24))
            ale.restoreState(state)
            if value >= 1:  # Lands a punch without taking one: good enough, skip the rest.
                return index
            if value > best[0]:
                best = (value, index)
        return best[1]


# ---------------------------------------------------------------------------------------------------------
# Freeway.

FREEWAY_UP = 1  # Minimal set: NOOP UP DOWN.


class FreewayExpert:
    """Always UP: a hit only pushes the chicken back a lane, so this scores ~21+ per full game."""

    name = "freeway_up"

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        pass

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        return _as_action(FREEWAY_UP)
