//! Progressive delivery on a route: a rollout moves the route's weights from a stable cohort to
//! a candidate through steps ([`steps`]: where a rollout stands and what it does next), and
//! judges the candidate against the stable cohort on the same traffic at every step
//! ([`judge`]: pure statistics, over a [`window`] of the step's traffic). [`state`] is the
//! record kept in the source of truth beside the route's weights. The task that looks and
//! moves is the admin surface's (`crate::admin::rollouts`): it writes where weights are kept.
pub mod judge;
pub mod state;
pub mod steps;
pub mod window;

pub use state::{Analysis, Rollout};
