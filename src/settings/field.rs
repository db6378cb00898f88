//! A key's value as written, typed by the rule it must meet: a settings struct names each
//! value's rule in its field's type (`timeout: Option<Field<PositiveDuration>>`), and the rule
//! carries the message a wrong value gets. The value stays as written until its section is
//! checked, so that one wrong value does not stop the rest of the file from being read, and
//! every problem is named with its key.

use std::marker::PhantomData;

use serde::Deserialize;
use serde_yaml::Value;

use super::{Checked, Report};

/// A value as written, to be read by the rule `R`.
#[derive(Deserialize)]
#[serde(transparent, bound = "")]
pub struct Field<R> {
    value: Value,
    #[serde(skip)]
    rule: PhantomData<fn() -> R>,
}

impl<R> Field<R> {
    /// The value as written.
    pub fn value(&self) -> &Value {
        &self.value
    }
}

/// What a value must be, read into what the settings hold.
pub trait Rule {
    type Value;
    /// Read `value`, given for `key` in the mapping at `parent`; every problem goes to
    /// `report`, named by `key`.
    fn read(report: &mut Report, parent: &str, key: &str, value: &Value) -> Option<Self::Value>;
}

impl Report {
    /// The value of `key` in the mapping at `parent`, read by its rule: `Ok(None)` when not
    /// given, `Err(())` when wrong (the problem recorded).
    pub(crate) fn read<R: Rule>(
        &mut self,
        parent: &str,
        key: &str,
        field: Option<&Field<R>>,
    ) -> Checked<R::Value> {
        let Some(field) = field else {
            return Ok(None);
        };
        R::read(self, parent, key, &field.value).map(Some).ok_or(())
    }

    /// The value of `key` in the mapping at `parent`, which must be given: `what` says what
    /// it is when it is missing.
    pub(crate) fn required<R: Rule>(
        &mut self,
        parent: &str,
        key: &str,
        field: Option<&Field<R>>,
        what: &str,
    ) -> Option<R::Value> {
        let Some(field) = field else {
            self.missing(parent, key, what);
            return None;
        };
        R::read(self, parent, key, &field.value)
    }
}
