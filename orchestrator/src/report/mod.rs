//! Reports: tables and Gantt charts.
