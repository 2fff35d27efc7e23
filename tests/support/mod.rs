//! Shared test support. It lives in the testkit crate (`testkit::world`),
//! with the API stand-in and the sandboxes, so that none of it is part of
//! the product; this module only brings it into every test binary.
#![allow(unused_imports)]

pub use testkit::world::*;
