//! Tests of the source module: the NTS half on its own, the whole source
//! through its driver interface, and attack scenarios in the harness.

mod attacks;
mod driver;
mod nts;
mod saved;
