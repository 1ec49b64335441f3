//! Index newtypes. Ops, edges and devices are dense indices into the graph's vectors; the
//! user-facing names (the `id` strings of the JSON) live in the graph itself.

use serde::{Deserialize, Serialize};

macro_rules! index_type {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The dense index this id stands for.
            #[inline]
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl From<usize> for $name {
            #[inline]
            fn from(i: usize) -> Self {
                Self(i as $inner)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

index_type!(
    /// An operator: index into [`crate::Graph::ops`].
    OpId,
    u32
);
index_type!(
    /// A data edge: index into [`crate::Graph::edges`] (and into the JSON `edges` array).
    EdgeId,
    u32
);
index_type!(
    /// A device: index into [`crate::Graph::devices`].
    DeviceId,
    u16
);
