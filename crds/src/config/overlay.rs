//! One declaration for a config section and the custom resource's view of it.
//!
//! A `JanusTrainingJob` sets a few settings and leaves the rest to its method's preset;
//! a `JanusEvalJob` sets its sampling and judge settings, each defaulting to the
//! evaluation protocol's. Writing those views by hand (every field again, with a
//! hand-written copy onto the config) let the two drift: the CRD missed `warmupRatio`
//! once the config had it. [`section_with_overlay!`] declares the section's fields once
//! and derives the overlay from them: the same names (camelCase in the CRD), the same
//! types (or the CRD's narrower integer, converted in one place), the same doc comments
//! (so `kubectl explain` and the config reference agree), and `apply_to`, which sets the
//! config from exactly the fields the resource has.

/// Declares `pub struct $name` (the config section) and, with the `k8s` feature,
/// `pub struct $overlay`, the resource's view of it, with
/// `apply_to(&self, &mut $name)`.
///
/// Two kinds of overlay:
/// - `pub struct $overlay;`: every field an `Option`, left out when unset; `apply_to`
///   sets the fields the resource names and keeps the others (a preset's values);
/// - `pub struct $overlay = <section value>;`: every field present, defaulting to that
///   section value's (the API server fills the defaults in, so a stored resource shows
///   them); `apply_to` sets every field. Its CEL rules are schemars `extend`s (see
///   the derive below).
///
/// Per field: doc comments, then `name: Type`, then optionally
/// - `as CrdType`: the overlay's type when it differs (a CRD integer is `u32` where the
///   config's is `usize`), converted by [`ToSection`] / [`FromSection`];
/// - `{ attributes }` for the config field only (e.g. its serde default);
/// - `[ attributes ]` for the overlay field only (its schema range or CEL rule, with the
///   CRD's field path in messages; a `serde(rename)` where the CRD's name differs).
///
/// A field written `config name: Type` is only in the config (the resource cannot set
/// it, or sets it through a field of its own); the overlay leaves it out.
/// Every field ends with a comma.
macro_rules! section_with_overlay {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $(#[$ometa:meta])*
        pub struct $overlay:ident;
        { $($fields:tt)* }
    ) => {
        section_with_overlay!(@munch optional [] [$(#[$meta])*] $name [$(#[$ometa])*] $overlay
            [] [] [] [] ; $($fields)*);
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $(#[$ometa:meta])*
        pub struct $overlay:ident = $default:expr;
        { $($fields:tt)* }
    ) => {
        section_with_overlay!(@munch defaulted [$default] [$(#[$meta])*] $name [$(#[$ometa])*] $overlay
            [] [] [] [] ; $($fields)*);
    };

    // A field only in the config.
    (@munch $kind:ident [$($default:tt)*] [$($meta:tt)*] $name:ident [$($ometa:tt)*] $overlay:ident
        [$($cfg:tt)*] [$($ov:tt)*] [$($apply:tt)*] [$($from:tt)*] ;
        $(#[doc = $doc:literal])*
        config $field:ident : $ty:ty
        $({ $($cattr:meta),* $(,)? })?
        , $($rest:tt)*
    ) => {
        section_with_overlay!(@munch $kind [$($default)*] [$($meta)*] $name [$($ometa)*] $overlay
            [$($cfg)* $(#[doc = $doc])* $($(#[$cattr])*)? pub $field: $ty,]
            [$($ov)*] [$($apply)*] [$($from)*] ; $($rest)*);
    };
    // A field in both, every field of an optional overlay an `Option`.
    (@munch optional [] [$($meta:tt)*] $name:ident [$($ometa:tt)*] $overlay:ident
        [$($cfg:tt)*] [$($ov:tt)*] [$($apply:tt)*] [$($from:tt)*] ;
        $(#[doc = $doc:literal])*
        $field:ident : $ty:ty $(as $oty:ty)?
        $({ $($cattr:meta),* $(,)? })?
        $([ $($oattr:meta),* $(,)? ])?
        , $($rest:tt)*
    ) => {
        section_with_overlay!(@munch optional [] [$($meta)*] $name [$($ometa)*] $overlay
            [$($cfg)* $(#[doc = $doc])* $($(#[$cattr])*)? pub $field: $ty,]
            [$($ov)*
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                $($(#[$oattr])*)?
                pub $field: Option<section_with_overlay!(@type $ty $(, $oty)?)>,
            ]
            [$($apply)* $field] [] ; $($rest)*);
    };
    // A field in both, present in a defaulted overlay.
    (@munch defaulted [$($default:tt)*] [$($meta:tt)*] $name:ident [$($ometa:tt)*] $overlay:ident
        [$($cfg:tt)*] [$($ov:tt)*] [$($apply:tt)*] [$($from:tt)*] ;
        $(#[doc = $doc:literal])*
        $field:ident : $ty:ty $(as $oty:ty)?
        $({ $($cattr:meta),* $(,)? })?
        $([ $($oattr:meta),* $(,)? ])?
        , $($rest:tt)*
    ) => {
        section_with_overlay!(@munch defaulted [$($default)*] [$($meta)*] $name [$($ometa)*] $overlay
            [$($cfg)* $(#[doc = $doc])* $($(#[$cattr])*)? pub $field: $ty,]
            [$($ov)*
                $(#[doc = $doc])*
                $($(#[$oattr])*)?
                pub $field: section_with_overlay!(@type $ty $(, $oty)?),
            ]
            [$($apply)* $field] [] ; $($rest)*);
    };

    (@munch optional [] [$($meta:tt)*] $name:ident [$($ometa:tt)*] $overlay:ident
        [$($cfg:tt)*] [$($ov:tt)*] [$($apply:ident)*] [] ;
    ) => {
        $($meta)*
        pub struct $name { $($cfg)* }

        $($ometa)*
        #[cfg(feature = "k8s")]
        #[derive(
            Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize, kube::KubeSchema,
        )]
        #[serde(rename_all = "camelCase")]
        pub struct $overlay { $($ov)* }

        #[cfg(feature = "k8s")]
        impl $overlay {
            /// Set the fields this overlay names on `section`, leaving the others.
            pub fn apply_to(&self, section: &mut $name) {
                $(
                    if let Some(v) = &self.$apply {
                        section.$apply = $crate::config::overlay::ToSection::to_section(v);
                    }
                )*
            }
        }
    };
    (@munch defaulted [$($default:tt)*] [$($meta:tt)*] $name:ident [$($ometa:tt)*] $overlay:ident
        [$($cfg:tt)*] [$($ov:tt)*] [$($apply:ident)*] [] ;
    ) => {
        $($meta)*
        pub struct $name { $($cfg)* }

        $($ometa)*
        #[cfg(feature = "k8s")]
        // schemars' own derive: kube's `KubeSchema` cannot copy a container default; a CEL
        // rule is written `schemars(extend("x-kubernetes-validations" = [...]))`.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase", default)]
        pub struct $overlay { $($ov)* }

        #[cfg(feature = "k8s")]
        impl $overlay {
            /// Set every field of `section` this overlay has.
            pub fn apply_to(&self, section: &mut $name) {
                $(
                    section.$apply = $crate::config::overlay::ToSection::to_section(&self.$apply);
                )*
            }

            /// The overlay that renders `section` unchanged (in its fields).
            pub fn from_section(section: &$name) -> Self {
                $overlay {
                    $(
                        $apply: $crate::config::overlay::FromSection::from_section(&section.$apply),
                    )*
                }
            }
        }

        #[cfg(feature = "k8s")]
        impl Default for $overlay {
            fn default() -> Self {
                Self::from_section(&$($default)*)
            }
        }
    };

    (@type $ty:ty) => { $ty };
    (@type $ty:ty, $oty:ty) => { $oty };
}

/// An overlay field's value as the config field it sets.
#[cfg(feature = "k8s")]
pub trait ToSection<T> {
    fn to_section(&self) -> T;
}

/// A config field's value as the overlay field that would set it (the overlay's
/// defaults).
#[cfg(feature = "k8s")]
pub trait FromSection<T> {
    fn from_section(v: &T) -> Self;
}

#[cfg(feature = "k8s")]
impl<T: Clone> ToSection<T> for T {
    fn to_section(&self) -> T {
        self.clone()
    }
}

#[cfg(feature = "k8s")]
impl<T: Clone> FromSection<T> for T {
    fn from_section(v: &T) -> Self {
        v.clone()
    }
}

// The CRDs' counts are 32-bit (`format: uint32`, bounded by their schema ranges); the
// config's are `usize`.
#[cfg(feature = "k8s")]
impl ToSection<usize> for u32 {
    fn to_section(&self) -> usize {
        *self as usize
    }
}

#[cfg(feature = "k8s")]
impl ToSection<Option<usize>> for Option<u32> {
    fn to_section(&self) -> Option<usize> {
        self.map(|v| v as usize)
    }
}

#[cfg(feature = "k8s")]
impl FromSection<usize> for u32 {
    fn from_section(v: &usize) -> Self {
        u32::try_from(*v).unwrap_or(u32::MAX)
    }
}

#[cfg(feature = "k8s")]
impl FromSection<Option<usize>> for Option<u32> {
    fn from_section(v: &Option<usize>) -> Self {
        v.map(|v| u32::try_from(v).unwrap_or(u32::MAX))
    }
}

// A CRD names a model by URL; the config holds it as a path (a URL string is a valid
// one: the trainer's reader opens both).
#[cfg(feature = "k8s")]
impl ToSection<Option<std::path::PathBuf>> for crate::url::StorageUrl {
    fn to_section(&self) -> Option<std::path::PathBuf> {
        Some(std::path::PathBuf::from(self.as_str()))
    }
}
