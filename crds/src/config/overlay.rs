//! One declaration for a config section and the custom resource's view of it.
//!
//! A `JanusTrainingJob` sets a few settings and leaves the rest to its method's preset.
//! Writing that view by hand (every field again, as an `Option`, with a hand-written
//! copy onto the config) let the two drift: the CRD missed `warmupRatio` once the
//! config had it. [`section_with_overlay!`] declares the section's fields once and
//! derives the overlay from them: the same names (camelCase in the CRD), the same doc
//! comments (so `kubectl explain` and the config reference agree), every field
//! optional, and `apply_to`, which sets exactly the fields a job names.

/// Declares `pub struct $name` (the config section) and, with the `k8s` feature,
/// `pub struct $overlay` (every field an `Option` of the section's type, camelCase,
/// with `apply_to(&self, &mut $name)`).
///
/// Per field: doc comments, `name: Type`, then optionally `{ attributes }` for the
/// config field only (e.g. its serde default) and `[ attributes ]` for the overlay
/// field only (its schema range or CEL rule, with the CRD's field path in messages).
macro_rules! section_with_overlay {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $(#[$ometa:meta])*
        pub struct $overlay:ident;
        {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty
                $({ $($cattr:meta),* $(,)? })?
                $([ $($oattr:meta),* $(,)? ])?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[doc = $doc])*
                $($(#[$cattr])*)?
                pub $field: $ty,
            )*
        }

        $(#[$ometa])*
        #[cfg(feature = "k8s")]
        #[derive(
            Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize, kube::KubeSchema,
        )]
        #[serde(rename_all = "camelCase")]
        pub struct $overlay {
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                $($(#[$oattr])*)?
                pub $field: Option<$ty>,
            )*
        }

        #[cfg(feature = "k8s")]
        impl $overlay {
            /// Set the fields this overlay names on `section`, leaving the others.
            pub fn apply_to(&self, section: &mut $name) {
                $(
                    if let Some(v) = &self.$field {
                        section.$field = v.clone();
                    }
                )*
            }

            /// The dotted config keys (`section.field`) this overlay sets, in
            /// declaration order: what a rendered config took from the job.
            pub fn keys(&self) -> Vec<&'static str> {
                let mut k = Vec::new();
                $(
                    if self.$field.is_some() {
                        k.push(stringify!($field));
                    }
                )*
                k
            }
        }
    };
}
