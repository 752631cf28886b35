package pulse.peer;

import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * Keeps the global org registry store: the compacted org topic read whole by
 * every instance. Values are stored as they are on the topic (a global store's
 * restore copies the topic's bytes without this processor), and parsed at
 * read time, when the rollup needs the parent links.
 */
final class RegistryUpdater implements Processor<Bytes, byte[], Void, Void> {
    static final String STORE = "orgs";
    private KeyValueStore<Bytes, byte[]> store;

    @Override
    public void init(ProcessorContext<Void, Void> context) {
        store = context.getStateStore(STORE);
    }

    @Override
    public void process(Record<Bytes, byte[]> record) {
        if (record.key() == null) return;
        if (record.value() == null) store.delete(record.key());
        else store.put(record.key(), record.value());
    }
}
