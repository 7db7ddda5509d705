//! The guest bindings generated from `wit/plugin-0.2.wit`
//! (`edgebus:plugin@0.2.0`), one module per world.
//!
//! Both worlds import the same `types`, `log`, `state` and `budget`
//! interfaces, so the `transform` world reuses the `filter` world's modules:
//! one `Record` type and one set of import shims serve both.
//! `pub_export_macro` makes wit-bindgen put each world's export metadata
//! inside its `export!` macro, so a plugin component describes only the
//! world it actually exports.

/// Bindings for the `filter` world, plus the shared interfaces.
pub mod filter {
    wit_bindgen::generate!({
        path: "../../wit/plugin-0.2.wit",
        world: "edgebus:plugin/filter@0.2.0",
        pub_export_macro: true,
    });
}

/// Bindings for the `transform` world.
pub mod transform {
    wit_bindgen::generate!({
        path: "../../wit/plugin-0.2.wit",
        world: "edgebus:plugin/transform@0.2.0",
        pub_export_macro: true,
        with: {
            "edgebus:plugin/types@0.2.0": crate::bindings::filter::edgebus::plugin::types,
            "edgebus:plugin/log@0.2.0": crate::bindings::filter::edgebus::plugin::log,
            "edgebus:plugin/state@0.2.0": crate::bindings::filter::edgebus::plugin::state,
            "edgebus:plugin/budget@0.2.0": crate::bindings::filter::edgebus::plugin::budget,
        },
    });
}
