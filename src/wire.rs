//! bincode, wrapped once: the configuration and the two calls every binary encoding in narra goes
//! through (the state store's records in `store::codec`, the media helper's frames in
//! `steps::media::protocol`). bincode 2.0.1 is pinned and no longer maintained; keeping it behind
//! these two functions keeps a later replacement to one file.
//!
//! It knows nothing of versions or framing: its callers put a version byte in front and say what
//! a failure means to them.

use serde::Serialize;
use serde::de::DeserializeOwned;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// `value` in bincode's standard configuration.
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, config()).map_err(|error| error.to_string())
}

/// One value from the front of `bytes`, and how many bytes it took: callers decide what bytes left
/// over mean (for both of narra's formats, corruption).
pub fn from_bytes_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(|error| error.to_string())
}
