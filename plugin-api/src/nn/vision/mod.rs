//! Vision towers shared by several add-ons, so a plugin composes them instead of copying them.

pub mod pixtral;
