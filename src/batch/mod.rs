//! Batch mode's pieces that are not the engine: the journal that makes a crash never create a
//! batch twice ([`journal`]) and the provider's batch protocol ([`openai`]).

pub mod journal;
pub mod openai;
