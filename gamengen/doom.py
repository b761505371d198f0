"""The game GameNGen learns: ViZDoom (PyPI `vizdoom`, headless), its action table and the shaped reward.

Scenario: the bundled `deathmatch` map: enemies that shoot back, weapons, health and armour pick-ups, and
rooms to walk through. We want frames with movement, combat and pick-ups, which GameNGen must learn to
render (defend_the_center has enemies but no walking; basic has neither variety nor movement).
An episode ends when the player dies or after 4200 tics (1050 agent steps at action repeat 4).

ACTIONS is the contract between the recorded episodes, the diffusion model and play.py: action a at step t is
what the player pressed after seeing frame t, for the 4 tics that lead to frame t + 1.

    id  name          buttons            key in play.py
    0   noop          -                  (nothing)
    1   attack        ATTACK             space
    2   forward       MOVE_FORWARD       W / up
    3   backward      MOVE_BACKWARD      S / down
    4   strafe_left   MOVE_LEFT          A
    5   strafe_right  MOVE_RIGHT         D
    6   turn_left     TURN_LEFT          left / Q
    7   turn_right    TURN_RIGHT         right / E

Frames: RGB uint8 (3, H, W), 160x120 (or 320x240) padded with black rows to a multiple of 16 in height
(120 -> 128, 240 -> 256 as in the paper), so the autoencoder's 8x downsampling gives whole latents.

    env = DoomEnv(seed=0)
    frame = env.reset()                       # (3, 128, 160) uint8
    frame, reward, done, info = env.step(2)   # forward for 4 tics (or the previous action: sticky)
"""

import random

import numpy as np

BUTTONS = ("ATTACK", "MOVE_FORWARD", "MOVE_BACKWARD", "MOVE_LEFT", "MOVE_RIGHT", "TURN_LEFT", "TURN_RIGHT")
ACTIONS = ("noop", "attack", "forward", "backward", "strafe_left", "strafe_right", "turn_left", "turn_right")
VARIABLES = (
    "KILLCOUNT",
    "HITCOUNT",
    "HITS_TAKEN",
    "ITEMCOUNT",
    "SECRETCOUNT",
    "HEALTH",
    "ARMOR",
    "SELECTED_WEAPON_AMMO",
    "POSITION_X",
    "POSITION_Y",
    "DEAD",
)
RESOLUTIONS = {"160x120": "RES_160X120", "320x240": "RES_320X240"}
AREA = 128.0  # map units per exploration cell (a Doom corridor is ~128 wide)


def padded_height(h):
    return -(-h // 16) * 16


def visible(x):
    """The game screen's rows of padded frames (..., H, W): a 4:3 screen (160x120, 320x240) centred in H rows, the
    black padding rows above and below left out, so that metrics measure only what the game drew."""
    h = x.shape[-1] * 3 // 4
    pad = (x.shape[-2] - h) // 2
    return x[..., pad : pad + h, :] if pad > 0 else x


class DoomEnv:
    """One headless ViZDoom game with action repeat, sticky actions and the paper's shaped reward (A.5),
    in points / 1000 so PPO's value targets stay near 1: player hit -0.1, death -5, enemy hit +0.3, kill +1,
    item pick-up +0.1, secret +0.5, a newly visited area +0.02 * (1 + 0.5 * its L1 distance in cells from the
    start), health and armour 0.01 per point of change, ammo 0.01 per round gained and 0.001 per round spent."""

    def __init__(self, seed=0, resolution="160x120", repeat=4, sticky=0.25, hud=False, scenario="deathmatch"):
        import vizdoom as vzd

        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution {resolution!r}: expected one of {', '.join(RESOLUTIONS)}")
        self.repeat, self.sticky, self.rng = repeat, sticky, random.Random(seed)
        game = vzd.DoomGame()
        game.load_config(f"{vzd.scenarios_path}/{scenario}.cfg")
        game.set_screen_resolution(getattr(vzd.ScreenResolution, RESOLUTIONS[resolution]))
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_render_hud(hud)
        game.set_available_buttons([getattr(vzd.Button, b) for b in BUTTONS])
        game.set_available_game_variables([getattr(vzd.GameVariable, v) for v in VARIABLES])
        game.set_mode(vzd.Mode.PLAYER)
        game.set_seed(seed)
        game.init()
        self.game = game
        w, h = (int(x) for x in resolution.split("x"))
        self.shape = (3, padded_height(h), w)
        self.pad_top = (self.shape[1] - h) // 2
        self.buttons = [[0] * len(BUTTONS)] + [[int(i == j) for j in range(len(BUTTONS))] for i in range(len(BUTTONS))]

    def _frame(self):
        state = self.game.get_state()
        out = np.zeros(self.shape, np.uint8)
        if state is not None:
            out[:, self.pad_top : self.pad_top + state.screen_buffer.shape[0]] = state.screen_buffer.transpose(2, 0, 1)
        return out

    def _vars(self):
        return dict(zip(VARIABLES, self.game.get_state().game_variables)) if self.game.get_state() else None

    def reset(self):
        self.game.new_episode()
        self.prev_action, self.vars = 0, self._vars()
        self.start = (self.vars["POSITION_X"], self.vars["POSITION_Y"])
        self.visited = {self._cell()}
        return self._frame()

    def _cell(self):
        return (int(self.vars["POSITION_X"] // AREA), int(self.vars["POSITION_Y"] // AREA))

    def step(self, action):
        """-> (next frame, shaped reward, done, info). With probability `sticky` the previous action is
        repeated instead (smoother, more human play, as the paper does); info["action"] is what was played."""
        if self.sticky and self.rng.random() < self.sticky:
            action = self.prev_action
        self.prev_action = action
        self.game.make_action(self.buttons[action], self.repeat)
        done = self.game.is_episode_finished()
        new = self._vars()
        reward = self.shaped_reward(self.vars, new, dead=done and self.game.is_player_dead())
        if new is not None:
            self.vars = new
            cell = self._cell()
            if cell not in self.visited:
                self.visited.add(cell)
                dist = abs(cell[0] - int(self.start[0] // AREA)) + abs(cell[1] - int(self.start[1] // AREA))
                reward += 0.02 * (1 + 0.5 * dist)
        info = {
            "action": action,
            "kills": self.vars["KILLCOUNT"],
            "health": self.vars["HEALTH"],
            "areas": len(self.visited),
        }
        return self._frame(), reward, done, info

    @staticmethod
    def shaped_reward(old, new, dead=False):
        if dead or new is None:
            return -5.0 if dead else 0.0
        d = {k: new[k] - old[k] for k in VARIABLES}
        ammo = d["SELECTED_WEAPON_AMMO"]
        return (
            -0.1 * d["HITS_TAKEN"]
            + 0.3 * d["HITCOUNT"]
            + 1.0 * d["KILLCOUNT"]
            + 0.1 * d["ITEMCOUNT"]
            + 0.5 * d["SECRETCOUNT"]
            + 0.01 * d["HEALTH"]
            + 0.01 * d["ARMOR"]
            + 0.01 * max(0, ammo)
            + 0.001 * min(0, ammo)
        )

    def close(self):
        self.game.close()
