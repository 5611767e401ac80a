//! Checks an operator runs against the host: the listener audit (`guard audit`), the
//! client-side probe (`guard audit --probe`) and the host doctor (`guard doctor`).

pub mod audit;
pub mod doctor;
pub mod http_probe;
pub mod probe;
