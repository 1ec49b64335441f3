//! Lower bounds on the makespan (see [`moirai_shared::plan::bound`] for the solver-free ones).
