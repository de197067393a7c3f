//! The crate's error: bad input, described well enough to show a user as-is.

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Input that breaks a rule of the vocabulary. Nothing here has an underlying cause: the
/// value itself is wrong, and the message says which rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A name (network, endpoint id, interface, container) breaks its rule.
    #[error("invalid {what} {value:?}: {rule}")]
    Name {
        /// What kind of name.
        what: &'static str,
        /// The refused value.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A MAC address that does not parse, or is not usable for an interface.
    #[error("invalid MAC address {value:?}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Mac {
        /// The refused text.
        value: String,
        /// Why, beyond "does not parse".
        detail: Option<&'static str>,
    },
    /// A port mapping that does not parse.
    #[error("invalid port mapping {value:?}: {rule}")]
    Port {
        /// The refused text.
        value: String,
        /// What is wrong.
        rule: &'static str,
    },
    /// A network or endpoint spec with a field out of range.
    #[error("{subject}: {problem}")]
    Spec {
        /// `network NAME` or `endpoint ID`.
        subject: String,
        /// What is wrong.
        problem: String,
    },
}

impl Error {
    pub(crate) fn name(what: &'static str, value: &str, rule: impl Into<String>) -> Self {
        Error::Name {
            what,
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    pub(crate) fn spec(subject: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Spec {
            subject: subject.into(),
            problem: problem.into(),
        }
    }
}

/// How a failure looks to a caller of the agent's API: every crate's error says which of
/// these it is, and the agent maps them to one status each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input; nothing was changed.
    Invalid,
    /// The request conflicts with what exists; nothing was changed.
    Conflict,
    /// Something named does not exist.
    NotFound,
    /// The system failed (the kernel, a file, a thread).
    Internal,
}
