//! Which origin a request goes to: a pure function of the weight, the user's sticky cookie,
//! the origins' health and one random draw, so it is tested without any IO.

use serde::{Deserialize, Serialize};

/// One side of the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Old,
    New,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Old, Side::New];

    pub fn index(self) -> usize {
        match self {
            Side::Old => 0,
            Side::New => 1,
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }

    /// The body of the 502 a client gets when this side did not answer, on either path.
    pub fn no_answer(self) -> String {
        format!("the {} origin did not answer", self.as_str())
    }

    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "old" => Some(Side::Old),
            "new" => Some(Side::New),
            _ => None,
        }
    }

    /// This side's share in percent when the new side has `new_percent`.
    pub fn share(self, new_percent: u8) -> u8 {
        match self {
            Side::Old => 100 - new_percent.min(100),
            Side::New => new_percent.min(100),
        }
    }
}

/// Picks the origin. `roll` is uniform in 0..100.
///
/// A sticky user stays on their side while it is healthy and still has a share (after a
/// rollback to 0% nobody is kept on the new side). Others are drawn by weight. A side that
/// is down gives way to the other one when that is up, whatever the weights say: a request
/// served by the "wrong" side beats a failed one.
pub fn choose(new_percent: u8, sticky: Option<Side>, up: [bool; 2], roll: u8) -> Side {
    if let Some(s) = sticky {
        if up[s.index()] && s.share(new_percent) > 0 {
            return s;
        }
    }
    let drawn = if roll < new_percent.min(100) {
        Side::New
    } else {
        Side::Old
    };
    if up[drawn.index()] || !up[drawn.other().index()] {
        drawn
    } else {
        drawn.other()
    }
}

/// The draw for [`choose`]: uniform in 0..100. (A random byte modulo 100 is not: 0 to 55
/// come three times in 256 and the rest twice, which sent 58.6% of users to a side weighted
/// 50%.)
pub fn roll() -> u8 {
    rand::random_range(0..100)
}

/// The side named by the sticky cookie `name` in a Cookie header, if any.
pub fn sticky_side(cookie_header: &str, name: &str) -> Option<Side> {
    cookie_header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then(|| Side::parse(v.trim())).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_exact_over_all_draws() {
        for p in [0u8, 1, 5, 10, 25, 50, 100] {
            let new = (0..100u8)
                .filter(|r| choose(p, None, [true, true], *r) == Side::New)
                .count();
            assert_eq!(new, p as usize);
        }
    }

    #[test]
    fn rolls_are_uniform_over_0_to_99() {
        let n = 200_000;
        let mut seen = [0u32; 100];
        for _ in 0..n {
            let r = roll();
            assert!(r < 100, "{r}");
            seen[r as usize] += 1;
        }
        // 2,000 expected for each; the standard deviation is about 44, so these bounds are
        // more than six of them away. A byte modulo 100 gives 2,344 and 1,562.
        for (r, count) in seen.iter().enumerate() {
            assert!((1_700..=2_300).contains(count), "{r} drawn {count} times");
        }
        // At 50%, half of all draws.
        let new = seen[..50].iter().sum::<u32>();
        assert!((98_000..=102_000).contains(&new), "{new} of {n}");
    }

    #[test]
    fn sticky_users_stay_while_their_side_has_a_share_and_is_up() {
        assert_eq!(choose(10, Some(Side::New), [true, true], 99), Side::New);
        assert_eq!(choose(10, Some(Side::Old), [true, true], 0), Side::Old);
        // rolled back to 0%: nobody is kept on the new side
        assert_eq!(choose(0, Some(Side::New), [true, true], 0), Side::Old);
        // their side is down
        assert_eq!(choose(50, Some(Side::New), [true, false], 0), Side::Old);
    }

    #[test]
    fn a_down_side_gives_way() {
        assert_eq!(choose(100, None, [true, false], 0), Side::Old);
        assert_eq!(choose(0, None, [false, true], 50), Side::New);
        // both down: the draw stands
        assert_eq!(choose(0, None, [false, false], 50), Side::Old);
    }

    #[test]
    fn cookies_are_read_by_name() {
        assert_eq!(
            sticky_side("a=1; cutover_origin=new; b=2", "cutover_origin"),
            Some(Side::New)
        );
        assert_eq!(sticky_side("cutover_origin=blue", "cutover_origin"), None);
        assert_eq!(sticky_side("x_cutover_origin=old", "cutover_origin"), None);
    }
}
