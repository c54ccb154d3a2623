//! Errors of channel operations, one enum per kind of call (as std and crossbeam do).

use std::fmt;

use crate::error::ChannelError;

/// Why an endpoint could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Every endpoint entry is held by a live endpoint.
    #[error("the channel already has {max} live endpoints")]
    TooManyEndpoints {
        /// The size of the endpoint table.
        max: usize,
    },
}

macro_rules! value_error {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $msg:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub enum $name<T> {
            $($(#[$vm])* $var(T),)*
        }

        impl<T> $name<T> {
            /// The value that was not sent.
            pub fn into_inner(self) -> T {
                match self { $($name::$var(v) => v,)* }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self { $($name::$var(_) => f.write_str(concat!(stringify!($var), "(..)")),)* }
            }
        }

        impl<T> fmt::Display for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self { $($name::$var(_) => f.write_str($msg),)* }
            }
        }

        impl<T> std::error::Error for $name<T> {}

        impl<T> From<$name<T>> for ChannelError {
            fn from(e: $name<T>) -> ChannelError {
                match e { $($name::$var(_) => ChannelError::$var,)* }
            }
        }

        impl<T> From<$name<T>> for crate::Error {
            fn from(e: $name<T>) -> crate::Error {
                crate::Error::Channel(e.into())
            }
        }
    };
}

value_error! {
    /// Why [`Sender::try_send`](super::Sender::try_send) did not send; carries the value back.
    TrySendError {
        /// The channel is full.
        Full => "the channel is full",
        /// Every receiver is gone (dropped, or its process died).
        Disconnected => "every receiver of the channel is gone",
        /// The channel's words hold values no correct peer writes.
        Corrupted => "the channel's shared state is corrupted",
    }
}

value_error! {
    /// Why [`Sender::send`](super::Sender::send) did not send; carries the value
    /// back. (`send` waits without a timeout: no `Timeout` case, as std's.)
    SendError {
        /// Every receiver is gone (dropped, or its process died).
        Disconnected => "every receiver of the channel is gone",
        /// The channel's words hold values no correct peer writes.
        Corrupted => "the channel's shared state is corrupted",
    }
}

value_error! {
    /// Why [`Sender::send_timeout`](super::Sender::send_timeout) did not send;
    /// carries the value back.
    SendTimeoutError {
        /// The channel stayed full until the timeout.
        Timeout => "timed out: the channel stayed full",
        /// Every receiver is gone (dropped, or its process died).
        Disconnected => "every receiver of the channel is gone",
        /// The channel's words hold values no correct peer writes.
        Corrupted => "the channel's shared state is corrupted",
    }
}

/// Why [`Receiver::try_recv`](super::Receiver::try_recv) returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued right now.
    #[error("the channel is empty")]
    Empty,
    /// Nothing is queued and every sender is gone (dropped, or its process died).
    #[error("the channel is empty and every sender is gone")]
    Disconnected,
    /// The channel's words hold values no correct peer writes.
    #[error("the channel's shared state is corrupted")]
    Corrupted,
}

/// Why [`Receiver::recv`](super::Receiver::recv) returned nothing. (`recv`
/// waits without a timeout: no `Timeout` case, as std's.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing is queued and every sender is gone (dropped, or its process died).
    #[error("the channel is empty and every sender is gone")]
    Disconnected,
    /// The channel's words hold values no correct peer writes.
    #[error("the channel's shared state is corrupted")]
    Corrupted,
}

/// Why [`Receiver::recv_timeout`](super::Receiver::recv_timeout) returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout.
    #[error("timed out: nothing arrived")]
    Timeout,
    /// Nothing is queued and every sender is gone (dropped, or its process died).
    #[error("the channel is empty and every sender is gone")]
    Disconnected,
    /// The channel's words hold values no correct peer writes.
    #[error("the channel's shared state is corrupted")]
    Corrupted,
}

impl From<EndpointError> for ChannelError {
    fn from(e: EndpointError) -> ChannelError {
        match e {
            EndpointError::TooManyEndpoints { max } => ChannelError::TooManyEndpoints { max },
        }
    }
}

impl From<TryRecvError> for ChannelError {
    fn from(e: TryRecvError) -> ChannelError {
        match e {
            TryRecvError::Empty => ChannelError::Empty,
            TryRecvError::Disconnected => ChannelError::Disconnected,
            TryRecvError::Corrupted => ChannelError::Corrupted,
        }
    }
}

impl From<RecvError> for ChannelError {
    fn from(e: RecvError) -> ChannelError {
        match e {
            RecvError::Disconnected => ChannelError::Disconnected,
            RecvError::Corrupted => ChannelError::Corrupted,
        }
    }
}

/// As std: a blocking call's error is one of the timed call's.
impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> RecvTimeoutError {
        match e {
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
            RecvError::Corrupted => RecvTimeoutError::Corrupted,
        }
    }
}

/// As std: a blocking call's error is one of the timed call's.
impl<T> From<SendError<T>> for SendTimeoutError<T> {
    fn from(e: SendError<T>) -> SendTimeoutError<T> {
        match e {
            SendError::Disconnected(v) => SendTimeoutError::Disconnected(v),
            SendError::Corrupted(v) => SendTimeoutError::Corrupted(v),
        }
    }
}

impl From<RecvTimeoutError> for ChannelError {
    fn from(e: RecvTimeoutError) -> ChannelError {
        match e {
            RecvTimeoutError::Timeout => ChannelError::Timeout,
            RecvTimeoutError::Disconnected => ChannelError::Disconnected,
            RecvTimeoutError::Corrupted => ChannelError::Corrupted,
        }
    }
}

macro_rules! into_error {
    ($($t:ty),*) => {$(
        impl From<$t> for crate::Error {
            fn from(e: $t) -> crate::Error {
                crate::Error::Channel(e.into())
            }
        }
    )*};
}
into_error!(EndpointError, TryRecvError, RecvError, RecvTimeoutError);
