//! (being written: see the module owner)
