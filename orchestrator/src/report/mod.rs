//! What people read: the method table ([`table`]) and the Gantt chart ([`gantt`]).

pub mod gantt;
pub mod table;
