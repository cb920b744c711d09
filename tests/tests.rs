//! One integration-test binary; one module per area.

mod util;

mod guest;
mod switch;
mod uml;
