"""Scripted Atari experts that act on what the screen shows: positions now, velocities from the last frames.

Each expert reads on-screen object positions from RAM (a shortcut for parsing the frame; AtariARI
addresses) and re-decides every step from the current positions and those of the last `history`
steps, so its action is a function of frames a model has in its context. None of them clones or
restores emulator states, looks ahead, keeps a timer or a plan, or remembers its own actions, so
noise in the executed actions (DART recording, sticky actions) only changes the state it reacts to.
`tests/experts_test.py` holds them to that: only `getRAM` is readable, and a fresh expert shown the
last `history` RAMs chooses what the running one chose.

Every expert takes the env from `tasks.make_env` (minimal action set, frameskip 4) and returns
{'action': index into the minimal action set}. Scores under the evaluation settings are in the README.
"""
from __future__ import annotations

from collections.abc import Mapping

import gymnasium
import numpy as np

from data_pipelines import tasks
from data_pipelines.experts.policy import Action


def _ram(env: gymnasium.Env) -> np.ndarray:
    return env.unwrapped.ale.getRAM()


def _as_action(index: int) -> Action:
    return {"action": np.int32(index)}


def fold(x: float, low: float, high: float) -> float:
    """Position of a point moving freely along x after reflecting off walls at low and high."""
    span = high - low
    u = (x - low) % (2 * span)
    return low + (u if u <= span else 2 * span - u)


# ---------------------------------------------------------------------------------------------------------
# Pong
#
# Policy (re-decided from scratch every agent step; only NOOP / UP / DOWN are emitted):
#   1. Read on-screen positions (RAM only as a shortcut for what the frame shows): own paddle y, ball
#      x and y; velocities are differences to the previous frame (ball, paddle). No other memory.
#   2. Ball coming towards us: extrapolate the ball in a straight line to our paddle's x, folding the
#      path at the top and bottom walls. For each of NOOP / UP / DOWN (pushed for this step, then
#      released) predict where the paddle will be when the ball arrives, with a small kinematic model
#      of the paddle's inertia (its stick position leads it by ~0.72 x its last displacement; the
#      paddle closes 28% of the gap per emulator frame). Score each by how close the contact point
#      (ball y - paddle y) is to one of the paddle's two edges (rel -1 or 13: the ball then leaves at
#      vertical speed 8, which the CPU misses ~40% of the time; centre hits are almost never won),
#      with a large penalty for a miss. Push only if it beats NOOP by a margin (hysteresis).
#   3. Ball going away / not in play: return to a home point halfway between the screen centre and
#      the ball's height, pushing only when the predicted stopping point is >11 off (one push moves
#      the paddle ~22, so this is the widest dead zone that does not oscillate).
#
# Why it is imitable from frames: every input is a position or a one-frame difference visible on the
# current and previous frame; there is no hidden timer, plan, action queue or memory of the expert's
# own actions (injected random actions do not confuse it: the next step re-plans from what is seen).
# Caveat: the edge aim needs ~2-scanline precision, about what an 80x80 frame of the cropped field
# shows (2 scanlines per pixel), so a cloner copies approach, braking and homing more easily than the edge.
#
# Measured ALE facts: RAM (AtariARI) player y 51, enemy y 50, ball x 49, ball y 54 (0 = no ball).
# Paddle rows [py-14, py+1], ball rows [by-14, by-11], paddle y in [38, 203], ball y bounces at 48 and
# 204, ball x speed 4 per step. Contact rel = by - py in about [-3, 15]; returned vertical speed is
# -8 for rel <= 0, -4 for 1..4, 0 for 5..8, +4 for 9..12, +8 for >= 13. One push step moves the
# paddle ~22 (11 in the step pushed, 10 the next, 3 after). Minimal actions: 2 (RIGHT) = up, 3 (LEFT) = down.

PONG_NOOP, PONG_UP, PONG_DOWN = 0, 2, 3  # Minimal action set: RIGHT moves our paddle up, LEFT down.
PONG_PLAYER_Y, PONG_BALL_X, PONG_BALL_Y = 51, 49, 54
PONG_CONTACT_X = 191.0  # Ball x at which contact is predicted (tuned: 185 -> -5, 188 -> +1.8, 191 -> +2.5).
PONG_WALL_TOP, PONG_WALL_BOTTOM = 48.0, 204.0  # Ball y range; it reflects at these values.
PONG_PADDLE_MIN, PONG_PADDLE_MAX = 38.0, 203.0  # Own paddle y range.


PONG_LAG = 0.28  # Per emulator frame the paddle closes this fraction of the gap to the stick position.
PONG_STICK_STEP = 5.6  # Stick position change per emulator frame while UP / DOWN is held.
PONG_COAST = 0.72  # Remaining travel after release, as a multiple of the last per-step displacement.
PONG_FRAMES_PER_STEP = 4


def paddle_at(py: float, vy: float, push: int, frames: int) -> float:
    """Paddle y after `frames` emulator frames when pushing `push` (-1 up, 0, +1 down) for one step.

    Kinematic model of the (lagged) paddle fitted to observed trajectories: the stick position sits
    PONG_COAST * vy ahead of the paddle, moves PONG_STICK_STEP per frame while pushed, the paddle follows it.
    """
    stick = py + PONG_COAST * vy
    for f in range(frames):
        if f < PONG_FRAMES_PER_STEP:
            stick = min(max(stick + push * PONG_STICK_STEP, PONG_PADDLE_MIN), PONG_PADDLE_MAX)
        py += PONG_LAG * (stick - py)
    return py


def hit_cost(rel: float, aims: tuple[float, float]) -> float:
    """Cost of meeting the ball at rel = ball y - paddle y: 0 at a steep-return aim, large on a miss."""
    cost = min(abs(rel - aims[0]), abs(rel - aims[1]))
    if rel < -3.0 or rel > 16.0:
        cost += 50.0
    return cost


class PongExpert:
    """Predicted-intercept Pong controller; see the module docstring."""

    name = "pong_intercept"
    history = 2  # Steps of positions a decision reads: now and one step before.
    aim_top: float = -1.0  # rel (ball y - paddle y) for an upper-edge hit (ball returns steeply up).
    aim_bottom: float = 13.0  # rel for a lower-edge hit (returns steeply down).
    switch_margin: float = 2.0  # Push only if it lowers the predicted cost by more than this.
    home_dead_zone: float = 11.0  # Ball away: push when the stopping point misses home by more.
    home_weight: float = 0.5  # Ball away: home = centre + home_weight * (ball y - centre).
    contact_x: float = PONG_CONTACT_X

    def __init__(self) -> None:
        self._prev: tuple[float, float, float] | None = None  # Last (py, bx, by).

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._prev = None

    def _home(self, py: float, vy: float, by: float) -> int:
        """Action towards a home point (ball away or not in play), with a dead zone."""
        centre = 0.5 * (PONG_WALL_TOP + PONG_WALL_BOTTOM) - 6.0
        home = centre if by == 0 else centre + self.home_weight * (by - 6.0 - centre)
        error = home - (py + PONG_COAST * vy)
        if abs(error) <= self.home_dead_zone:
            return PONG_NOOP
        return PONG_DOWN if error > 0 else PONG_UP

    def _intercept(self, py: float, vy: float, bx: float, by: float, bvx: float, bvy: float) -> int:
        """Ball coming: the push (now, then release) whose predicted contact point is cheapest."""
        frames = max(round((self.contact_x - bx) / bvx * PONG_FRAMES_PER_STEP), 1)
        ball_y = fold(by + bvy * frames / PONG_FRAMES_PER_STEP, PONG_WALL_TOP, PONG_WALL_BOTTOM)
        aims = (self.aim_top, self.aim_bottom)
        costs = {a: hit_cost(ball_y - paddle_at(py, vy, push, frames), aims)
                 for a, push in ((PONG_NOOP, 0), (PONG_UP, -1), (PONG_DOWN, 1))}
        best = min((PONG_UP, PONG_DOWN), key=costs.__getitem__)
        return best if costs[best] < costs[PONG_NOOP] - self.switch_margin else PONG_NOOP

    def decide(self, py: float, bx: float, by: float) -> int:
        """Action index from positions now and (stored) one frame ago; updates the stored frame."""
        prev, self._prev = self._prev, (py, bx, by)
        vy = 0.0 if prev is None else py - prev[0]
        if by == 0 or prev is None or prev[2] == 0 or bx <= prev[1] or bx > self.contact_x + 2:
            return self._home(py, vy, by)
        return self._intercept(py, vy, bx, by, bx - prev[1], by - prev[2])

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        ram = _ram(env)
        py, bx, by = float(ram[PONG_PLAYER_Y]), float(ram[PONG_BALL_X]), float(ram[PONG_BALL_Y])
        return _as_action(self.decide(py, bx, by))


# ---------------------------------------------------------------------------------------------------------
# Breakout
#
# Policy (re-decided every step from what the current and the two previous frames show):
# - No ball in play (RAM ball y == 0): FIRE, every step. Serving is thus a visible consequence of an empty
#   court, never a one-off or timed event.
# - Ball in play: its velocity is the difference of its positions on the last two frames. While it falls,
#   the target x is where the straight line through those two positions crosses the paddle line, folded
#   back off the side walls (pure geometry on visible quantities, no emulator look-ahead). While it rises,
#   the target is the ball's current x.
# - The paddle has momentum (a push moves it ~23 px per step; after release it coasts ~11 px more). Its
#   coast is read off its last two displacements (visible motion), giving where it stops if released now.
#   The expert pushes towards the target when that stopping point is more than `dead_zone` px away,
#   else NOOP: a dead zone on a visible distance, so near-ties are rare and the action is a function of
#   the frames.
#
# Nothing depends on the expert's own previous action, so executed-action noise or sticky actions only
# change the state it reacts to. RAM is used only as a shortcut for on-screen positions (AtariARI: ball x
# ram[99], ball y ram[101], paddle x ram[72]).

BREAKOUT_NOOP, BREAKOUT_FIRE, BREAKOUT_RIGHT, BREAKOUT_LEFT = 0, 1, 2, 3  # Minimal action set.
BREAKOUT_PADDLE_Y = 178  # Ball RAM y at which the paddle meets it (measured contacts: y 175-182).
BREAKOUT_OFFSET = -8  # Paddle RAM x minus ball x at a centred hit (measured hit window: -17..0).
BREAKOUT_WALL_LEFT, BREAKOUT_WALL_RIGHT = 56.0, 199.0  # Ball RAM x where it bounces off the side walls.
BREAKOUT_PADDLE_MIN, BREAKOUT_PADDLE_MAX = 55, 191  # Paddle RAM x range.
BREAKOUT_COAST = 10.5  # Paddle px travelled after release, one step after a push.


def _breakout_positions(env: gymnasium.Env) -> tuple[int, int, int]:
    """(ball x, ball y, paddle x) as shown on screen; ball y is 0 when no ball is in play."""
    ram = _ram(env)
    return int(ram[99]), int(ram[101]), int(ram[72])


def landing_x(bx: int, by: int, dx: int, dy: int) -> float:
    """Ball x where it crosses the paddle line, straight-line extrapolation with wall reflections."""
    if dy <= 0:
        return float(bx)
    steps = max(BREAKOUT_PADDLE_Y - by, 0) / dy
    return fold(bx + dx * steps, BREAKOUT_WALL_LEFT, BREAKOUT_WALL_RIGHT)


def paddle_coast(v1: int, v2: int) -> float:
    """Paddle displacement still to come if released now, from its last two displacements v1 (newest)."""
    a1, a2 = abs(v1), abs(v2)
    if a1 >= 16 or 1 <= a1 <= 4:  # Full-speed push, or the first frames of a push/reversal.
        return BREAKOUT_COAST * np.sign(v1)
    if a1 >= 11 and a2 <= 1:  # Push from rest.
        return BREAKOUT_COAST * np.sign(v1)
    return 0.0  # At rest or coasting to a stop.


class BreakoutExpert:
    """FIRE when no ball is in play; otherwise steer the paddle's stopping point to the ball's landing x."""

    name = "breakout_intercept"
    history = 3  # Paddle positions of the last three steps (its coast), the ball's of the last two.

    def __init__(self, dead_zone: float = 6.0):
        self.dead_zone = dead_zone

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._balls: list[tuple[int, int]] = []  # Recent (x, y) of the ball in play.
        self._paddles: list[int] = []  # Recent paddle x.

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        bx, by, px = _breakout_positions(env)
        self._paddles = (self._paddles + [px])[-3:]
        if by == 0:
            self._balls = []
            return _as_action(BREAKOUT_FIRE)
        self._balls = (self._balls + [(bx, by)])[-2:]
        target = self._target_ball_x(bx, by) + BREAKOUT_OFFSET
        target = float(np.clip(target, BREAKOUT_PADDLE_MIN, BREAKOUT_PADDLE_MAX))
        return _as_action(self._steer(px, target))

    def _target_ball_x(self, bx: int, by: int) -> float:
        if len(self._balls) < 2:
            return float(bx)
        (x0, y0), _ = self._balls
        dx, dy = bx - x0, by - y0
        if abs(dx) > 12 or abs(dy) > 12:  # Not one ball's motion (new serve, wrap): no velocity yet.
            return float(bx)
        return landing_x(bx, by, dx, dy) if dy > 0 else float(bx)

    def _steer(self, px: int, target: float) -> int:
        p = self._paddles
        v1 = p[-1] - p[-2] if len(p) >= 2 else 0
        v2 = p[-2] - p[-3] if len(p) >= 3 else 0
        error = target - (px + paddle_coast(v1, v2))
        if error > self.dead_zone:
            return BREAKOUT_RIGHT
        if error < -self.dead_zone:
            return BREAKOUT_LEFT
        return BREAKOUT_NOOP


# ---------------------------------------------------------------------------------------------------------
# Boxing
#
# Inputs, all visible on the current frame: both boxers' positions and how far our own glove sticks out.
# Game facts (probed): a punch lands only when the boxers are 8..18 px apart vertically (level boxers,
# |dy| < ~7, cannot hit each other: a safe lane); at the closest distance (|dx| = 14) a punch lands at
# once; a missed punch leaves the glove out ~8 steps, during which the CPU counters; a hit against the
# rope knocks the CPU up or down, and following it chains hits every ~5 steps.
# Decision: stay 16 px to our side of the CPU; with the glove back (extension <= 28) sit 8 px above or
# below it (the side we are on, flipped at the ring edge), else retreat into the safe lane; FIRE with
# the move when the glove is fully back, |dx| in 12..28 and |dy| in 8..24; 6-px dead zones (standing
# still until the target is clearly off: chasing the CPU's small moves walked into its punches; 2 px
# scored ~55, 6 px ~78 on tuning seeds, and the 6-px threshold is ~3 pixels of an 80x80 frame).

BOXING_Y_MAX = 87  # Lowest boxer y inside the ring.


def _boxing_table() -> dict[tuple[int, int, bool], int]:
    """(x move -1/0/1, y move -1 up/0/1 down, fire) -> minimal-action index."""
    table = {}
    for index, name in enumerate(tasks.get_task("atari_boxing").action_meanings):  # Minimal set, index order.
        move = name.replace("FIRE", "")
        mx = 1 if "RIGHT" in move else (-1 if "LEFT" in move else 0)
        my = -1 if "UP" in move else (1 if "DOWN" in move else 0)
        table[(mx, my, "FIRE" in name)] = index
    return table


BOXING_TABLE = _boxing_table()


def _toward(delta: int, dead_zone: int) -> int:
    return 0 if abs(delta) <= dead_zone else int(np.sign(delta))


def boxing_decision(px: int, py: int, ex: int, ey: int, glove: int, *, dist: int = 16, offset: int = 8,
                    busy_glove: int = 28, fire_dx: tuple[int, int] = (12, 28),
                    fire_dy: tuple[int, int] = (8, 24), dead_zone: int = 6) -> int:
    """Positions (ours, the CPU's) and our glove's extension -> action index."""
    side = -1 if px < ex else 1
    target_x = ex + side * dist
    oy = offset if glove <= busy_glove else 0
    sy = 1 if py >= ey else -1
    target_y = ey + sy * oy
    if not 0 <= target_y <= BOXING_Y_MAX:
        target_y = ey - sy * oy
    adx, ady = abs(ex - px), abs(ey - py)
    fire = glove == 0 and fire_dx[0] <= adx <= fire_dx[1] and fire_dy[0] <= ady <= fire_dy[1]
    return BOXING_TABLE[(_toward(target_x - px, dead_zone), _toward(target_y - py, dead_zone), fire)]


class BoxingExpert:
    """Approach to punching range beside the CPU, punch when the glove is back, dodge while it is out."""

    name = "boxing_reactive"
    history = 1  # The current frame alone.

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        pass

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        ram = _ram(env)
        px, ex, py, ey = (int(v) for v in ram[32:36])
        return _as_action(boxing_decision(px, py, ex, ey, max(int(ram[55]), int(ram[57]))))


# ---------------------------------------------------------------------------------------------------------
# Freeway
#
# Policy (re-decided every step from the current frame and the few frames before it):
# - Each lane's car x is read off the screen (RAM shortcut); its velocity is its displacement over the
#   last few frames (wrap-around aware), so it is a visible quantity, not a hidden timer.
# - A candidate move is "safe" when, extrapolating every car linearly for `horizon` steps, no car is
#   inside the chicken's column while the chicken overlaps that car's lane. Candidates are checked in order
#   UP (keep walking up, or step up and hold there), NOOP (hold), DOWN (step back and hold); the first safe
#   one is taken, else the one whose first predicted hit is latest.
# - All thresholds are distances on screen (lane band half-height, column window), so the decision
#   switches only where a car visibly enters the danger zone.
#
# It does not use its own previous action, so noise or sticky actions only change the state it sees.
# RAM (AtariARI): chicken y ram[14] (grows upwards, 6 at the kerb), car x ram[108..117] = lanes bottom to
# top; lanes 0-4 drive right, 5-9 left (measured).

FREEWAY_NOOP, FREEWAY_UP, FREEWAY_DOWN = 0, 1, 2  # Minimal action set.
FREEWAY_LANE_Y = np.array([14, 30, 46, 62, 80, 96, 112, 128, 144, 160])  # Chicken y centred on each lane.
FREEWAY_STEP_Y = 4  # Chicken y per step while walking.
FREEWAY_Y_MIN = 6  # Chicken y at the bottom kerb.
FREEWAY_ROAD_WIDTH = 160  # Car x wraps modulo this.


def _freeway_positions(env: gymnasium.Env) -> tuple[int, np.ndarray]:
    """(chicken y, car x per lane bottom to top) as shown on screen."""
    ram = _ram(env)
    return int(ram[14]), ram[108:118].astype(np.float64)


def car_velocities(history: list[np.ndarray]) -> np.ndarray:
    """Per-lane x velocity (px/step) from the oldest and newest remembered car positions."""
    if len(history) < 2:
        return np.zeros(10)
    d = history[-1] - history[0]
    d = (d + FREEWAY_ROAD_WIDTH / 2) % FREEWAY_ROAD_WIDTH - FREEWAY_ROAD_WIDTH / 2
    return d / (len(history) - 1)


class FreewayExpert:
    """UP when the next few steps look clear of cars, else hold or back off."""

    name = "freeway_watch"
    history = 5  # Car positions over the last five steps give each lane's speed (memory + 1).

    def __init__(self, horizon: int = 4, band: float = 8.0, x_lo: float = 40.0, x_hi: float = 53.0,
                 memory: int = 4):
        self.horizon, self.band, self.x_lo, self.x_hi, self.memory = horizon, band, x_lo, x_hi, memory

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._cars: list[np.ndarray] = []

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        y, cars = _freeway_positions(env)
        self._cars = (self._cars + [cars])[-(self.memory + 1):]
        v = car_velocities(self._cars)
        plans = {FREEWAY_UP: [(y + FREEWAY_STEP_Y * s) for s in range(1, self.horizon + 1)],
                 FREEWAY_NOOP: [y] * self.horizon,
                 FREEWAY_DOWN: [max(y - FREEWAY_STEP_Y, FREEWAY_Y_MIN)] * self.horizon}
        hold_up = [y + FREEWAY_STEP_Y] * self.horizon
        first_hit = {a: self._first_hit(ys, cars, v) for a, ys in plans.items()}
        first_hit[FREEWAY_UP] = max(first_hit[FREEWAY_UP], self._first_hit(hold_up, cars, v))
        for a in (FREEWAY_UP, FREEWAY_NOOP, FREEWAY_DOWN):
            if first_hit[a] > self.horizon:
                return _as_action(a)
        return _as_action(max((FREEWAY_UP, FREEWAY_NOOP, FREEWAY_DOWN), key=lambda a: first_hit[a]))

    def _first_hit(self, ys: list[float], cars: np.ndarray, v: np.ndarray) -> int:
        """First step (1-based) at which chicken y ys[s-1] meets a car; horizon + 1 when none."""
        for s, ys_s in enumerate(ys, start=1):
            lanes = np.abs(FREEWAY_LANE_Y - ys_s) < self.band
            if not lanes.any():
                continue
            if self._in_column(cars[lanes], v[lanes], s):
                return s
        return self.horizon + 1

    def _in_column(self, x0: np.ndarray, v: np.ndarray, s: int) -> bool:
        """Whether any of these cars sweeps through the chicken's column during step s."""
        a = x0 + v * (s - 1)
        b = x0 + v * s
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        for shift in (-FREEWAY_ROAD_WIDTH, 0.0, FREEWAY_ROAD_WIDTH):  # Wrap-around.
            if np.any((hi + shift >= self.x_lo) & (lo + shift <= self.x_hi)):
                return True
        return False
