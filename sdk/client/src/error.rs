//! Client errors.

use edgebus_proto::ErrorCode;

use crate::wire::WireError;

/// Why a broker address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker address {input:?}: {reason}")]
pub struct BrokerAddrError {
    /// What was parsed.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client configuration (address, certificates) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The QUIC connection could not be set up or was lost.
    #[error("connection to {addr}: {detail}")]
    Connection {
        /// Broker address.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// A stream failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The broker answered with an error.
    #[error("broker error {code_name} ({code}): {message}")]
    Broker {
        /// Wire error code.
        code: u16,
        /// Its name, or "Unknown" for a code this client does not know.
        code_name: String,
        /// Detail from the broker.
        message: String,
    },
    /// The broker sent something this client cannot use.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The producer or subscription was shut down.
    #[error("closed")]
    Closed,
    /// Retries ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClientError {
    pub(crate) fn broker(code: u16, message: String) -> Self {
        ClientError::Broker {
            code,
            code_name: ErrorCode::from_u16(code)
                .map(|c| c.to_string())
                .unwrap_or_else(|| "Unknown".into()),
            message,
        }
    }

    /// The broker's error code, if the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }

    /// Whether retrying may succeed: lost connections and transient broker
    /// errors.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connection { .. } | ClientError::Wire(_) => true,
            ClientError::Broker { code, .. } => {
                ErrorCode::from_u16(*code).is_some_and(ErrorCode::is_retriable)
            }
            _ => false,
        }
    }
}
