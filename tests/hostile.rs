//! A lab file is untrusted input (ARCHITECTURE.md, "Confinement"): each case is an
//! attack or a bomb found by trying, checked to be refused or harmless. Victims
//! live outside the run folder and are checked unchanged afterwards.

mod bombs;
mod cow;
mod run_folder;
mod uml;
