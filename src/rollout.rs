//! Progressive delivery on a route: a rollout moves the route's weights from a stable cohort to
//! a candidate through steps ([`steps`]: where a rollout stands and what it does next), and
//! judges the candidate against the stable cohort on the same traffic at every step
//! ([`judge`]: pure statistics), so a bad candidate is rolled back before it has done much harm.
pub mod judge;
pub mod steps;
