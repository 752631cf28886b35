package pulse.peer;

import java.util.Map;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * Bounds the memory of all RocksDB instances of the process (the Kafka Streams
 * memory-management recipe): one LRU block cache shared by every store, with
 * index and filter blocks cached in it at high priority, and memtables charged
 * to the same cache by a WriteBufferManager. Without it every store (one per
 * partition and store, plus one per window segment) gets its own 50 MB cache
 * and 3 x 16 MB memtables.
 *
 * Sizes: {@code pulse.rocksdb.cache.bytes} (default 384 MiB, total off-heap
 * for blocks and memtables) and {@code pulse.rocksdb.memtable.bytes} (default
 * 192 MiB of it for memtables), as Streams configs.
 */
public final class BoundedRocksDb implements RocksDBConfigSetter {
    public static final String CACHE_BYTES = "pulse.rocksdb.cache.bytes";
    public static final String MEMTABLE_BYTES = "pulse.rocksdb.memtable.bytes";
    private static Cache cache;
    private static WriteBufferManager writeBufferManager;

    private static synchronized void init(Map<String, Object> configs) {
        if (cache != null) return;
        long total = longConfig(configs, CACHE_BYTES, 384L << 20);
        long memtables = longConfig(configs, MEMTABLE_BYTES, 192L << 20);
        cache = new LRUCache(total, -1, false, 0.1);
        writeBufferManager = new WriteBufferManager(memtables, cache);
    }

    private static long longConfig(Map<String, Object> configs, String key, long dflt) {
        Object v = configs.get(key);
        return v == null ? dflt : Long.parseLong(v.toString());
    }

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
        init(configs);
        BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
        table.setBlockCache(cache);
        table.setCacheIndexAndFilterBlocks(true);
        table.setCacheIndexAndFilterBlocksWithHighPriority(true);
        table.setPinTopLevelIndexAndFilter(true);
        options.setTableFormatConfig(table);
        options.setWriteBufferManager(writeBufferManager);
        // Memtables of 4 MiB (Streams' default is 16 MiB): the stores are many (about
        // 190 column families with 16 partitions) and each holds at least one arena
        // block (1/8 of it) against the shared budget; a budget smaller than that
        // floor makes every write trigger a flush.
        options.setWriteBufferSize(4L << 20);
        options.setMaxWriteBufferNumber(3);
    }

    @Override
    public void close(String storeName, Options options) {
        // The cache and the write buffer manager are shared by every store: never closed here.
    }
}
