/// A Kafka record from fuzz bytes: the first byte says whether the key and
/// value are null and how long the key is; the rest is the key, then the value.
pub fn record(data: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let Some((&head, rest)) = data.split_first() else { return (None, None) };
    let key_len = usize::from(head & 0x3f).min(rest.len());
    let (key, value) = rest.split_at(key_len);
    (Some(key).filter(|_| head & 0x40 == 0), Some(value).filter(|_| head & 0x80 == 0))
}
