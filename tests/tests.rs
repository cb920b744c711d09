//! One integration-test binary; one module per area.

mod util;

mod cmdline;
mod cow;
mod ext4;
mod guest;
mod hostile;
mod scenario;
mod sim;
mod switch;
mod uml;
