//! `bimip console`, the developer console of seed 002: its command language (`command`) and how it shows stanzas
//! (`show`). The interactive loop (line editor, connections, backend API calls) is in `src/bin/bimip/console.rs`.

pub mod command;
pub mod show;

pub use command::{AdminCommand, Command};
