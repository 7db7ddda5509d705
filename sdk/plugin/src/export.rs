//! [`export_filter!`](crate::export_filter) and
//! [`export_transform!`](crate::export_transform): the one line that turns a
//! [`Filter`](crate::Filter) or [`Transform`](crate::Transform) into a
//! component's exports.
//!
//! On `wasm32` a macro names a [`glue`] adapter type for the plugin and
//! hands it to wit-bindgen's generated `export!`, which emits the
//! canonical-ABI `init` and `filter`/`transform` functions and the custom
//! section describing the world. Elsewhere it only checks that the plugin
//! implements the trait, so the same crate builds and unit-tests natively.

/// Exports a [`Filter`](crate::Filter) as the component's `filter` world.
///
/// Use it once per crate, at module level:
///
/// ```
/// use edgebus_plugin::prelude::*;
///
/// struct KeepAll;
///
/// impl Filter for KeepAll {
///     fn init(_params: &Params) -> Result<Self, String> {
///         Ok(KeepAll)
///     }
///     fn filter(&mut self, _record: &Record) -> Result<bool, String> {
///         Ok(true)
///     }
/// }
///
/// export_filter!(KeepAll);
/// ```
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type EdgebusFilterExport = $crate::__private::FilterExport<$plugin>;
            $crate::__private::filter::export!(
                EdgebusFilterExport with_types_in $crate::__private::filter
            );
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn exported_type_must_implement_filter<P: $crate::Filter>() {}
            exported_type_must_implement_filter::<$plugin>();
        };
    };
}

/// Exports a [`Transform`](crate::Transform) as the component's `transform`
/// world.
///
/// Use it once per crate, at module level:
///
/// ```
/// use edgebus_plugin::prelude::*;
///
/// struct Uppercase;
///
/// impl Transform for Uppercase {
///     fn init(_params: &Params) -> Result<Self, String> {
///         Ok(Uppercase)
///     }
///     fn transform(&mut self, mut record: Record) -> Result<Vec<Record>, String> {
///         record.value.make_ascii_uppercase();
///         Ok(vec![record])
///     }
/// }
///
/// export_transform!(Uppercase);
/// ```
#[macro_export]
macro_rules! export_transform {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type EdgebusTransformExport = $crate::__private::TransformExport<$plugin>;
            $crate::__private::transform::export!(
                EdgebusTransformExport with_types_in $crate::__private::transform
            );
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            const fn exported_type_must_implement_transform<P: $crate::Transform>() {}
            exported_type_must_implement_transform::<$plugin>();
        };
    };
}

/// What the export macros expand to on `wasm32`: adapters from the
/// generated `Guest` traits to [`Filter`](crate::Filter) and
/// [`Transform`](crate::Transform). Not a public API.
#[cfg(target_arch = "wasm32")]
pub mod glue {
    pub use crate::bindings::{filter, transform};

    use crate::bindings::filter::edgebus::plugin::types as wit;
    use crate::{Filter, Params, Record, Transform};
    use std::any::Any;
    use std::cell::RefCell;
    use std::marker::PhantomData;

    thread_local! {
        // The component's plugin instance. A component exports exactly one
        // world, so one slot serves both adapters; `Any` lets the slot live
        // here, outside the generic code, for whichever type was exported.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// The `filter` world's exports, implemented by the plugin `P`.
    pub struct FilterExport<P>(PhantomData<P>);

    impl<P: Filter + 'static> filter::Guest for FilterExport<P> {
        fn init(params: Vec<wit::Param>) -> Result<(), String> {
            install(P::init(&to_params(params)))
        }

        fn filter(batch: Vec<wit::Record>) -> Result<Vec<bool>, String> {
            let batch: Vec<Record> = batch.into_iter().map(from_wit).collect();
            with_instance(|plugin: &mut P| crate::filter::run_batch(plugin, &batch))
        }
    }

    /// The `transform` world's exports, implemented by the plugin `P`.
    pub struct TransformExport<P>(PhantomData<P>);

    impl<P: Transform + 'static> transform::Guest for TransformExport<P> {
        fn init(params: Vec<wit::Param>) -> Result<(), String> {
            install(P::init(&to_params(params)))
        }

        fn transform(batch: Vec<wit::Record>) -> Result<Vec<Vec<wit::Record>>, String> {
            let batch = batch.into_iter().map(from_wit).collect();
            let outputs =
                with_instance(|plugin: &mut P| crate::transform::run_batch(plugin, batch))?;
            Ok(outputs
                .into_iter()
                .map(|records| records.into_iter().map(to_wit).collect())
                .collect())
        }
    }

    /// Replaces the instance; a failed `init` leaves none, so later batches
    /// fail rather than run a half-configured plugin.
    fn install<P: 'static>(plugin: Result<P, String>) -> Result<(), String> {
        INSTANCE.with_borrow_mut(|slot| {
            *slot = None;
            *slot = Some(Box::new(plugin?));
            Ok(())
        })
    }

    fn with_instance<P: 'static, R>(
        f: impl FnOnce(&mut P) -> Result<R, String>,
    ) -> Result<R, String> {
        INSTANCE.with_borrow_mut(|slot| {
            match slot.as_mut().and_then(|plugin| plugin.downcast_mut::<P>()) {
                Some(plugin) => f(plugin),
                None => Err("plugin called before a successful init".to_owned()),
            }
        })
    }

    fn to_params(params: Vec<wit::Param>) -> Params {
        params
            .into_iter()
            .map(|param| (param.key, param.value))
            .collect()
    }

    fn from_wit(record: wit::Record) -> Record {
        Record {
            key: record.key,
            value: record.value,
            headers: record
                .headers
                .into_iter()
                .map(|header| (header.key, header.value))
                .collect(),
            timestamp_ms: record.timestamp_ms,
            offset: record.offset,
            partition: record.partition,
        }
    }

    fn to_wit(record: Record) -> wit::Record {
        wit::Record {
            key: record.key,
            value: record.value,
            headers: record
                .headers
                .into_iter()
                .map(|(key, value)| wit::Header { key, value })
                .collect(),
            timestamp_ms: record.timestamp_ms,
            offset: record.offset,
            partition: record.partition,
        }
    }
}
