//! Work the bridge does by itself, beside the requests it serves: the cleaner of half-made
//! keys, the periodic synchronization of records with AWS, and the synchronization jobs asked
//! for through the API.

pub mod cleanup;
pub mod sync;
