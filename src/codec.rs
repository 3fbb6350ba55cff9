//! The gRPC codec: prost's, with buffers sized for this API's messages. tonic allocates a
//! buffer of `buffer_size` for each call's request and for its answer; its default, 8 KiB,
//! is glibc's "large" size class, whose every allocation first consolidates the fast bins
//! (`malloc_consolidate`, about a microsecond a call on the network thread;
//! BENCHMARKS.md, "The daemon's own CPU per call"). A WrapKey request (a PEM wrapping key
//! and a key name) or an AES key's answer fits in 1,000 bytes; a larger message has its
//! buffer grown to fit, as tonic does with any message larger than its default.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes allocated at first for a call's request and for its answer: glibc serves this
/// from its per-thread cache or a small bin (chunks under 1,024 bytes), never from the
/// large-request path that consolidates.
const BUFFER_BYTES: usize = 1000;

/// tonic's own: an answer stream yields to the runtime after this many bytes.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers (the generated services name it in
/// `build.rs`).
#[derive(Debug)]
pub(crate) struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        SmallBuffers(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
